//! The gateway's routing table. Instance actors attach their live MCP sessions
//! here when they are up and detach them when they go down; the reconciler sets
//! the tool pins. Every change rebuilds an immutable [`Catalog`] that gateway
//! sessions read without locking each other out, and is announced on a watch
//! channel so sessions can send `list_changed`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolResult, Prompt, Resource, ResourceTemplate, Tool};
use rmcp::service::{Peer, RoleClient};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::metrics::{MetricsSnapshot, ServerMetrics};
use super::naming::{self, Prefix};
use super::pins::PinStatus;
use super::relay::{Clients, ParkedCalls, PrivateStarter, Relay};
use crate::config::ServerSpec;
use crate::config::manager::{PrefixMode, ToolPinning};
use crate::config::spec::PrefixSetting;
use crate::state::{Capabilities, Health, InstanceId, ToolInfo};

/// What one upstream session offers, as last listed.
#[derive(Debug, Default)]
pub struct Lists {
    pub server_name: String,
    pub server_version: String,
    pub protocol_version: String,
    pub tools: Vec<Tool>,
    /// sha256 of each tool's definition (name, description, input schema), in
    /// the order of `tools`.
    pub tool_hashes: Vec<String>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
    pub prompts: Vec<Prompt>,
}

/// The sha256 (hex) of a tool definition: name, description and input
/// schema, and its title, annotations and output schema where it has them (a
/// tool without them hashes as it did before they counted).
pub fn tool_hash(tool: &Tool) -> String {
    definition_hash(tool, tool_extras(tool))
}

/// What earlier versions hashed (name, description, input schema): a pin
/// recorded then still stands for a tool whose other parts it never saw.
pub fn legacy_tool_hash(tool: &Tool) -> String {
    definition_hash(tool, Vec::new())
}

fn definition_hash(tool: &Tool, extras: Vec<(&'static str, serde_json::Value)>) -> String {
    let mut definition = serde_json::json!({
        "name": tool.name,
        "description": tool.description,
        "inputSchema": tool.input_schema,
    });
    for (key, value) in extras {
        definition[key] = value;
    }
    crate::config::view::hex(&Sha256::digest(definition.to_string().as_bytes()))
}

/// The title, annotations and output schema a tool has.
pub fn tool_extras(tool: &Tool) -> Vec<(&'static str, serde_json::Value)> {
    let mut extras = Vec::new();
    if let Some(title) = &tool.title {
        extras.push(("title", serde_json::json!(title)));
    }
    if let Some(annotations) = &tool.annotations {
        extras.push(("annotations", serde_json::to_value(annotations).unwrap_or_default()));
    }
    if let Some(schema) = &tool.output_schema {
        extras.push(("outputSchema", serde_json::Value::Object((**schema).clone())));
    }
    extras
}

impl Lists {
    /// The summary kept in observed state.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            server_name: self.server_name.clone(),
            server_version: self.server_version.clone(),
            protocol_version: self.protocol_version.clone(),
            tools: self
                .tools
                .iter()
                .zip(&self.tool_hashes)
                .map(|(t, sha)| ToolInfo {
                    name: t.name.to_string(),
                    description: t.description.as_ref().map(|d| d.to_string()),
                    sha256: sha.clone(),
                })
                .collect(),
            resources: self.resources.iter().map(|r| r.uri.clone()).collect(),
            prompts: self.prompts.iter().map(|p| p.name.clone()).collect(),
        }
    }
}

/// One live upstream session (an instance of a server).
pub struct Upstream {
    pub id: InstanceId,
    pub peer: Peer<RoleClient>,
    pub in_flight: AtomicU32,
    /// Not Unhealthy: may take requests.
    routable: AtomicBool,
    /// Its calls in flight and where their progress, logs and server
    /// requests go.
    pub relay: Arc<Relay>,
    /// Woken when a request met a transport error: the instance probes at once
    /// (and reconnects or restarts if the server is really gone).
    pub suspect: Arc<tokio::sync::Notify>,
    /// A stdio server's side door: tool calls sent past rmcp (`api::direct`).
    pub lane: Option<Arc<crate::transport::stdio::RawLane>>,
}

impl Upstream {
    pub fn new(
        id: InstanceId,
        peer: Peer<RoleClient>,
        relay: Arc<Relay>,
        suspect: Arc<tokio::sync::Notify>,
        lane: Option<Arc<crate::transport::stdio::RawLane>>,
    ) -> Self {
        Upstream {
            id,
            peer,
            in_flight: AtomicU32::new(0),
            routable: AtomicBool::new(true),
            relay,
            suspect,
            lane,
        }
    }

    /// The session speaks 2026-07-28 (no `initialize`; the client's context
    /// goes with each request, resource updates come on `subscriptions/listen`).
    pub fn speaks_modern(&self) -> bool {
        self.peer
            .peer_info()
            .is_some_and(|info| info.protocol_version >= rmcp::model::ProtocolVersion::V_2026_07_28)
    }
}

/// Token bucket for `request_rate_limit` (requests per second, burst of one
/// second's worth).
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(rate: f64) -> Self {
        RateLimiter {
            rate,
            state: Mutex::new((rate.max(1.0), Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = self.rate.max(1.0);
        state.0 = (state.0 + now.duration_since(state.1).as_secs_f64() * self.rate).min(burst);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.0) / self.rate))
        }
    }
}

/// Opt-in cache of tool results (`cache.tools`), bounded.
#[derive(Default)]
pub struct ResultCache {
    entries: Mutex<HashMap<String, (Instant, CallToolResult)>>,
}

const RESULT_CACHE_LIMIT: usize = 1024;

impl ResultCache {
    pub fn get(&self, key: &str) -> Option<CallToolResult> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((expires, result)) if *expires > Instant::now() => Some(result.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, key: String, ttl: Duration, result: CallToolResult) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= RESULT_CACHE_LIMIT {
            let now = Instant::now();
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= RESULT_CACHE_LIMIT {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now() + ttl, result));
    }

    fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Everything needed to route to one server, as of the current catalog.
pub struct ServerRoute {
    pub name: String,
    /// Routable upstreams (replicas), newest generation first.
    pub upstreams: Vec<Arc<Upstream>>,
    pub max_concurrent: u32,
    pub request_timeout: Duration,
    pub limiter: Option<Arc<RateLimiter>>,
    pub metrics: Arc<ServerMetrics>,
    pub cache: Arc<ResultCache>,
    pub cache_ttls: BTreeMap<String, Duration>,
    /// The spec: a `session: per_client` server's client sessions are
    /// started from it.
    pub spec: Arc<ServerSpec>,
}

/// Why a request could not be sent to a server.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Busy { limit: u32 },
    RateLimited { retry_after: Duration },
}

impl ServerRoute {
    /// The least-busy replica, after the rate limit and concurrency checks.
    pub fn pick(&self) -> Result<Arc<Upstream>, Refusal> {
        let upstream = self
            .upstreams
            .iter()
            .filter(|u| u.routable.load(Ordering::Relaxed))
            .min_by_key(|u| u.in_flight.load(Ordering::Relaxed))
            .or_else(|| self.upstreams.first())
            .cloned();
        // A route is only in the catalog with at least one upstream.
        let Some(upstream) = upstream else {
            return Err(Refusal::Busy { limit: 0 });
        };
        self.admit(&upstream)
    }

    /// `upstream` (a replica, or a client's own session of the server) if
    /// it is under `max_concurrent_requests` and the server under its rate limit.
    pub fn admit(&self, upstream: &Arc<Upstream>) -> Result<Arc<Upstream>, Refusal> {
        if upstream.in_flight.load(Ordering::Relaxed) >= self.max_concurrent {
            return Err(Refusal::Busy {
                limit: self.max_concurrent,
            });
        }
        if let Some(limiter) = &self.limiter {
            limiter
                .try_acquire()
                .map_err(|retry_after| Refusal::RateLimited { retry_after })?;
        }
        Ok(upstream.clone())
    }
}

/// One tool, resource or prompt as the gateway exposes it (for `capabilities`).
#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    pub kind: &'static str,
    /// The name (or URI) clients use.
    pub exposed: String,
    pub server: String,
    /// The name (or URI) on the server.
    pub upstream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tools only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinStatus>,
    /// Hidden from clients: filtered by `tools.allow`/`tools.deny`, or a changed
    /// tool withheld by `tool_pinning: enforce`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<&'static str>,
}

/// An immutable view of everything routable, rebuilt on every change.
#[derive(Default)]
pub struct Catalog {
    pub tools: Vec<Tool>,
    tool_routes: HashMap<String, (Arc<ServerRoute>, String)>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
    pub prompts: Vec<Prompt>,
    /// Serialized size of each item of the lists above, for pages by size:
    /// tools, resources, templates, prompts. Measured when a client first
    /// lists (the catalog is rebuilt on every attach and health change; most
    /// rebuilds are never listed).
    sizes: std::sync::OnceLock<[Vec<usize>; 4]>,
    prompt_routes: HashMap<String, (Arc<ServerRoute>, String)>,
    servers: HashMap<String, Arc<ServerRoute>>,
    /// Servers that are known but cannot take requests, and why.
    unavailable: BTreeMap<String, String>,
    pub entries: Vec<CatalogEntry>,
    /// Fingerprints of the exposed tool, resource and prompt lists: a session
    /// sends `list_changed` for the ones that moved.
    pub fingerprints: [u64; 3],
    /// The settings the names and pages were made with.
    pub separator: String,
    pub page_size: usize,
    /// Resources exposed under their own URI: exposed URI → (server, URI).
    resource_routes: HashMap<String, (String, String)>,
    /// Templates exposed as written: (server, template), to route reads of
    /// URIs no list names.
    bare_templates: Vec<(String, String)>,
    /// Servers whose URIs are exposed as written (unless another server
    /// offers the same URI: those are in `shared_uris`).
    bare_servers: BTreeSet<String>,
    shared_uris: HashSet<String>,
    /// Which server an exposed tool or prompt name belongs (or last belonged)
    /// to: a call to a name of a server that is down gets "not available",
    /// not "unknown tool", also when the name has no prefix.
    owners: [HashMap<String, String>; 2],
}

impl Catalog {
    /// Serialized sizes of the items of each list (tools, resources,
    /// templates, prompts), measured once per catalog.
    pub fn sizes(&self) -> &[Vec<usize>; 4] {
        self.sizes.get_or_init(|| {
            fn sizes<T: Serialize>(items: &[T]) -> Vec<usize> {
                items
                    .iter()
                    .map(|item| serde_json::to_vec(item).map_or(0, |b| b.len()))
                    .collect()
            }
            [
                sizes(&self.tools),
                sizes(&self.resources),
                sizes(&self.templates),
                sizes(&self.prompts),
            ]
        })
    }

    pub fn tool(&self, name: &str) -> Option<&(Arc<ServerRoute>, String)> {
        self.tool_routes.get(name)
    }

    pub fn prompt(&self, name: &str) -> Option<&(Arc<ServerRoute>, String)> {
        self.prompt_routes.get(name)
    }

    pub fn server(&self, name: &str) -> Option<&Arc<ServerRoute>> {
        self.servers.get(name)
    }

    /// Every server that can take requests.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<ServerRoute>> {
        self.servers.values()
    }

    /// Why the server an exposed name belongs to (by its prefix, or as the
    /// name was last seen) is unavailable, if it is a known server that is down.
    pub fn unavailable_for(&self, kind: &str, exposed: &str) -> Option<(&str, &str)> {
        let owners = &self.owners[usize::from(kind == "prompt")];
        if let Some(owner) = owners.get(exposed)
            && let Some((server, reason)) = self.unavailable.get_key_value(owner)
        {
            return Some((server.as_str(), reason.as_str()));
        }
        let separator = self.separator.as_str();
        self.unavailable.iter().find_map(|(server, reason)| {
            exposed
                .strip_prefix(server.as_str())
                .is_some_and(|rest| rest.starts_with(separator) || rest.is_empty())
                .then_some((server.as_str(), reason.as_str()))
        })
    }

    /// The server and upstream URI of a resource URI a client sends: the
    /// `mcp-manager://SERVER/` form, a URI exposed as written, a URI matching a
    /// template exposed as written, or (when one server alone exposes URIs as
    /// written) that server's.
    pub fn resource_route<'a>(&'a self, uri: &'a str) -> Option<(&'a str, &'a str)> {
        if let Some(parsed) = naming::parse_resource_uri(uri) {
            return Some(parsed);
        }
        if let Some((server, upstream)) = self.resource_routes.get(uri) {
            return Some((server.as_str(), upstream.as_str()));
        }
        let matching: BTreeSet<&str> = self
            .bare_templates
            .iter()
            .filter(|(_, template)| naming::template_matches(template, uri))
            .map(|(server, _)| server.as_str())
            .collect();
        if matching.len() == 1 {
            return matching.first().map(|server| (*server, uri));
        }
        if !matching.is_empty() {
            return None; // templates of several servers match: ambiguous
        }
        let mut bare = self.bare_servers.iter();
        match (bare.next(), bare.next()) {
            (Some(server), None) => Some((server.as_str(), uri)),
            _ => None,
        }
    }

    /// Some server's names and URIs are exposed as written
    /// (`prefix: on_conflict` or a server's `prefix: false`).
    pub fn names_as_written(&self) -> bool {
        !self.bare_servers.is_empty()
    }

    /// Whether a URI of `server` may be listed as written: its server exposes
    /// names as written, no other such server offers it, and it does not look
    /// like one of our own prefixed URIs.
    fn listable_as_written(&self, server: &str, uri: &str) -> bool {
        self.bare_servers.contains(server)
            && !self.shared_uris.contains(uri)
            && !uri.starts_with(naming::RESOURCE_SCHEME)
    }

    /// How a URI (or template) a server lists is shown in the lists.
    fn listed_uri(&self, server: &str, uri: &str) -> String {
        if self.listable_as_written(server, uri) {
            uri.to_string()
        } else {
            naming::resource_uri(server, uri)
        }
    }

    /// How a URI that `server` returned (in a read or tool result) is shown to
    /// clients: as written only if reading it back reaches that server with
    /// that URI, else prefixed.
    pub fn exposed_uri(&self, server: &str, uri: &str) -> String {
        if self.listable_as_written(server, uri) && self.resource_route(uri) == Some((server, uri)) {
            uri.to_string()
        } else {
            naming::resource_uri(server, uri)
        }
    }

    pub fn unavailable(&self, server: &str) -> Option<&str> {
        self.unavailable.get(server).map(String::as_str)
    }
}

/// Gateway-wide settings from the manager section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub separator: String,
    /// `manager.gateway.prefix`.
    pub prefix: PrefixMode,
    pub pinning: ToolPinning,
    /// Items per page of a list (0: everything in one page).
    pub page_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            separator: "__".into(),
            prefix: PrefixMode::Always,
            pinning: ToolPinning::Warn,
            page_size: 0,
        }
    }
}

struct Attached {
    upstream: Arc<Upstream>,
    lists: Arc<Lists>,
}

struct ServerEntry {
    spec: Arc<ServerSpec>,
    attached: Vec<Attached>,
    limiter: Option<(u64, Arc<RateLimiter>)>,
    metrics: Arc<ServerMetrics>,
    cache: Arc<ResultCache>,
}

impl ServerEntry {
    fn set_spec(&mut self, spec: Arc<ServerSpec>) {
        // Keep the token bucket unless the rate changed.
        self.limiter = match (spec.request_rate_limit, self.limiter.take()) {
            (None, _) => None,
            (Some(rate), Some((bits, limiter))) if bits == rate.to_bits() => Some((bits, limiter)),
            (Some(rate), _) => Some((rate.to_bits(), Arc::new(RateLimiter::new(rate)))),
        };
        self.spec = spec;
    }
}

#[derive(Default)]
struct Table {
    servers: BTreeMap<String, ServerEntry>,
    /// server → tool → pinned sha256.
    pins: BTreeMap<String, BTreeMap<String, String>>,
    /// Why a server without a session is down, as its instances last said.
    down: BTreeMap<String, String>,
    settings: Settings,
}

pub struct Registry {
    /// Service-wide counters for `/metrics`: here because every part of the
    /// service (reconciler, gateway sessions, API) holds the registry.
    pub counters: crate::status::ServiceCounters,
    /// The gateway's client sessions: log levels and subscriptions.
    pub clients: Clients,
    /// Calls waiting for a 2026-07-28 client's answers.
    pub parked: ParkedCalls,
    /// Starts the upstream sessions of `session: per_client` servers (set by
    /// the service: the gateway does not spawn processes itself).
    pub private: std::sync::OnceLock<std::sync::Weak<dyn PrivateStarter>>,
    /// Keeps the timers that calls set from waking the runtime's driver.
    pub pacer: Arc<super::pacer::Pacer>,
    table: Mutex<Table>,
    catalog: watch::Sender<Arc<Catalog>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            counters: crate::status::ServiceCounters::default(),
            clients: Clients::default(),
            parked: ParkedCalls::default(),
            private: std::sync::OnceLock::new(),
            pacer: Arc::default(),
            table: Mutex::default(),
            catalog: watch::Sender::new(Arc::new(Catalog::default())),
        }
    }
}

impl Registry {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is only mutated in short sections that do not panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.subscribe()
    }

    pub fn separator(&self) -> String {
        self.catalog().separator.clone()
    }

    pub fn set_settings(&self, settings: Settings) {
        let mut table = self.table();
        table.settings = settings;
        self.rebuild(&table);
    }

    /// Pins as loaded from sled or changed by the reconciler: server → tool → sha.
    pub fn set_pins(&self, server: &str, pins: BTreeMap<String, String>) {
        let mut table = self.table();
        table.pins.insert(server.to_string(), pins);
        self.rebuild(&table);
    }

    fn entry<'a>(table: &'a mut Table, server: &str, spec: &Arc<ServerSpec>) -> &'a mut ServerEntry {
        table.servers.entry(server.to_string()).or_insert_with(|| ServerEntry {
            spec: Arc::clone(spec),
            attached: Vec::new(),
            limiter: None,
            metrics: Arc::default(),
            cache: Arc::default(),
        })
    }

    /// An instance's session is up: route to it.
    pub fn attach(&self, upstream: Upstream, spec: Arc<ServerSpec>, lists: Arc<Lists>) -> Arc<Upstream> {
        let upstream = Arc::new(upstream);
        upstream.routable.store(true, Ordering::Relaxed);
        let mut table = self.table();
        let entry = Self::entry(&mut table, &upstream.id.server, &spec);
        entry.set_spec(spec);
        entry.attached.retain(|a| a.upstream.id != upstream.id);
        entry.attached.push(Attached {
            upstream: upstream.clone(),
            lists,
        });
        // Newest generation first, then by replica.
        entry.attached.sort_by(|a, b| {
            (b.upstream.id.generation, a.upstream.id.replica).cmp(&(a.upstream.id.generation, b.upstream.id.replica))
        });
        self.rebuild(&table);
        drop(table);
        self.clients.replay(&upstream);
        upstream
    }

    /// An instance listed its tools again (after `list_changed` or `list_ttl`).
    pub fn update_lists(&self, id: &InstanceId, lists: Arc<Lists>) {
        let mut table = self.table();
        if let Some(entry) = table.servers.get_mut(&id.server) {
            entry.cache.clear();
            for a in &mut entry.attached {
                if a.upstream.id == *id {
                    a.lists = lists.clone();
                }
            }
            self.rebuild(&table);
        }
    }

    /// New in-place settings (limits, filters, cache) for a server.
    pub fn update_spec(&self, server: &str, spec: Arc<ServerSpec>) {
        let mut table = self.table();
        if let Some(entry) = table.servers.get_mut(server) {
            entry.set_spec(spec);
            self.rebuild(&table);
        }
    }

    /// Health changed: Unhealthy instances take no requests.
    pub fn set_health(&self, id: &InstanceId, health: Health) {
        let routable = health != Health::Unhealthy;
        let table = self.table();
        let Some(entry) = table.servers.get(&id.server) else {
            return;
        };
        let mut flipped = false;
        for a in &entry.attached {
            if a.upstream.id == *id && a.upstream.routable.swap(routable, Ordering::Relaxed) != routable {
                flipped = true;
            }
        }
        if flipped {
            self.rebuild(&table);
        }
    }

    /// An instance's session is gone (`reason` says why, for callers).
    pub fn detach(&self, id: &InstanceId, reason: &str) {
        let mut table = self.table();
        table.down.insert(id.server.clone(), reason.to_string());
        if let Some(entry) = table.servers.get_mut(&id.server) {
            entry.attached.retain(|a| a.upstream.id != *id);
            if entry.attached.is_empty() {
                entry.cache.clear();
            }
        }
        self.rebuild(&table);
    }

    /// A server is down for this reason (starting, backing off, failed, ...).
    /// Only shown while it has no session.
    pub fn set_down_reason(&self, server: &str, reason: String) {
        let mut table = self.table();
        let has_session = table.servers.get(server).is_some_and(|e| !e.attached.is_empty());
        if table.down.get(server) != Some(&reason) {
            table.down.insert(server.to_string(), reason);
            if !has_session {
                self.rebuild(&table);
            }
        }
    }

    /// A server's current metrics (also after it stopped).
    pub fn metrics(&self, server: &str) -> Option<MetricsSnapshot> {
        self.table().servers.get(server).map(|e| e.metrics.snapshot())
    }

    /// Adds a point of history to every server's metrics (the service calls
    /// this every few seconds).
    pub fn sample_history(&self, now_ms: u64) {
        for entry in self.table().servers.values() {
            entry.metrics.sample(now_ms);
        }
    }

    pub fn all_metrics(&self) -> BTreeMap<String, MetricsSnapshot> {
        self.table()
            .servers
            .iter()
            .map(|(name, e)| (name.clone(), e.metrics.snapshot()))
            .collect()
    }

    /// Rebuilds the catalog from the table and publishes it.
    fn rebuild(&self, table: &Table) {
        let previous = self.catalog.borrow().clone();
        let catalog = build(table, &previous.owners);
        self.catalog.send_replace(Arc::new(catalog));
    }
}

fn fingerprint<T: AsRef<[u8]>>(items: impl Iterator<Item = T>) -> u64 {
    let mut hasher = Sha256::new();
    for item in items {
        hasher.update(item.as_ref());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

/// The catalog of a table: names, filters and pins applied.
fn build(table: &Table, owners_before: &[HashMap<String, String>; 2]) -> Catalog {
    let settings = &table.settings;
    let mut catalog = Catalog {
        separator: settings.separator.clone(),
        page_size: settings.page_size,
        ..Catalog::default()
    };
    let mut tool_pairs: Vec<(Arc<ServerRoute>, &Tool, &str, Prefix<'_>)> = Vec::new();
    let mut prompt_pairs: Vec<(Arc<ServerRoute>, &Prompt, Prefix<'_>)> = Vec::new();
    // Resources and templates, exposed once every server's are known (a URI
    // two servers offer is prefixed for both).
    let mut resource_items: Vec<(&str, &Resource, Prefix<'_>)> = Vec::new();
    let mut template_items: Vec<(&str, &ResourceTemplate, Prefix<'_>)> = Vec::new();
    for (name, entry) in &table.servers {
        let routable: Vec<&Attached> = entry
            .attached
            .iter()
            .filter(|a| a.upstream.routable.load(Ordering::Relaxed))
            .collect();
        let Some(first) = routable.first() else {
            let reason = if entry.attached.is_empty() {
                table
                    .down
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| "it is not running".into())
            } else {
                "it is unhealthy: its health checks are failing".to_string()
            };
            catalog.unavailable.insert(name.clone(), reason);
            continue;
        };
        let spec = &entry.spec;
        let route = Arc::new(ServerRoute {
            name: name.clone(),
            upstreams: routable.iter().map(|a| a.upstream.clone()).collect(),
            max_concurrent: spec.max_concurrent_requests.max(1),
            request_timeout: spec.request_timeout,
            limiter: entry.limiter.as_ref().map(|(_, l)| l.clone()),
            metrics: entry.metrics.clone(),
            cache: entry.cache.clone(),
            cache_ttls: spec
                .cache
                .as_ref()
                .map(|c| c.tools.iter().map(|(k, v)| (k.clone(), v.0)).collect())
                .unwrap_or_default(),
            spec: spec.clone(),
        });
        catalog.servers.insert(name.clone(), route.clone());
        let prefix = match &spec.prefix {
            Some(PrefixSetting::Flag(true)) => Prefix::Always(name.as_str()),
            Some(PrefixSetting::Flag(false)) => Prefix::Never,
            Some(PrefixSetting::Text(text)) => Prefix::Always(text.as_str()),
            None => match settings.prefix {
                PrefixMode::Always => Prefix::Always(name.as_str()),
                PrefixMode::OnConflict => Prefix::OnConflict,
            },
        };
        let lists = &first.lists;
        let pins = table.pins.get(name);
        for (tool, sha) in lists.tools.iter().zip(&lists.tool_hashes) {
            let pin = match (settings.pinning, pins.and_then(|p| p.get(tool.name.as_ref()))) {
                (ToolPinning::Off, _) => None,
                (_, None) => Some(PinStatus::New),
                (_, Some(pinned)) if pinned == sha => Some(PinStatus::Pinned),
                (_, Some(_)) => Some(PinStatus::Changed),
            };
            let hidden = if !naming::tool_allowed(&spec.tools.allow, &spec.tools.deny, &tool.name) {
                Some("filtered by tools.allow/tools.deny")
            } else if pin == Some(PinStatus::Changed) && settings.pinning == ToolPinning::Enforce {
                Some("changed since pinned; run `mcp-manager approve`")
            } else {
                None
            };
            catalog.entries.push(CatalogEntry {
                kind: "tool",
                exposed: String::new(),
                server: name.clone(),
                upstream: tool.name.to_string(),
                description: tool.description.as_ref().map(|d| d.to_string()),
                pin,
                hidden,
            });
            if hidden.is_none() {
                tool_pairs.push((route.clone(), tool, sha, prefix));
            }
        }
        if !matches!(prefix, Prefix::Always(_)) {
            catalog.bare_servers.insert(name.clone());
        }
        resource_items.extend(lists.resources.iter().map(|r| (name.as_str(), r, prefix)));
        template_items.extend(lists.templates.iter().map(|t| (name.as_str(), t, prefix)));
        for prompt in &lists.prompts {
            prompt_pairs.push((route.clone(), prompt, prefix));
        }
    }

    // URIs (and templates) that more than one server exposes as written.
    let mut offered: HashMap<&str, usize> = HashMap::new();
    for (_, uri, prefix) in resource_items
        .iter()
        .map(|(s, r, p)| (s, r.uri.as_str(), p))
        .chain(template_items.iter().map(|(s, t, p)| (s, t.uri_template.as_str(), p)))
    {
        if !matches!(prefix, Prefix::Always(_)) {
            *offered.entry(uri).or_default() += 1;
        }
    }
    catalog.shared_uris = offered
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(uri, _)| uri.to_string())
        .collect();
    for (server, resource, _) in &resource_items {
        let mut exposed = (*resource).clone();
        exposed.uri = catalog.listed_uri(server, &resource.uri);
        if exposed.uri == resource.uri {
            catalog
                .resource_routes
                .insert(exposed.uri.clone(), (server.to_string(), resource.uri.clone()));
        }
        catalog.entries.push(CatalogEntry {
            kind: "resource",
            exposed: exposed.uri.clone(),
            server: server.to_string(),
            upstream: resource.uri.clone(),
            description: resource.description.clone(),
            pin: None,
            hidden: None,
        });
        catalog.resources.push(exposed);
    }
    for (server, template, _) in &template_items {
        let mut exposed = (*template).clone();
        exposed.uri_template = catalog.listed_uri(server, &template.uri_template);
        if exposed.uri_template == template.uri_template {
            catalog
                .bare_templates
                .push((server.to_string(), template.uri_template.clone()));
        }
        catalog.entries.push(CatalogEntry {
            kind: "resource_template",
            exposed: exposed.uri_template.clone(),
            server: server.to_string(),
            upstream: template.uri_template.clone(),
            description: template.description.clone(),
            pin: None,
            hidden: None,
        });
        catalog.templates.push(exposed);
    }

    for (name, reason) in &table.down {
        if !table.servers.contains_key(name) {
            catalog.unavailable.insert(name.clone(), reason.clone());
        }
    }

    // Tool names, by the deterministic rule of `naming`.
    let pairs: Vec<naming::Pair<'_>> = tool_pairs
        .iter()
        .map(|(r, t, _, p)| (r.name.as_str(), t.name.as_ref(), *p))
        .collect();
    let names = naming::expose_with(&pairs, &settings.separator);
    let mut exposed_by_pair: HashMap<(&str, &str), &str> = HashMap::new();
    for ((route, tool, _, _), exposed) in tool_pairs.iter().zip(&names) {
        let mut t = (*tool).clone();
        t.name = exposed.clone().into();
        catalog.tools.push(t);
        catalog
            .tool_routes
            .insert(exposed.clone(), (route.clone(), tool.name.to_string()));
        exposed_by_pair.insert((route.name.as_str(), tool.name.as_ref()), exposed.as_str());
    }
    for entry in &mut catalog.entries {
        if entry.kind == "tool" {
            entry.exposed = exposed_by_pair
                .get(&(entry.server.as_str(), entry.upstream.as_str()))
                .map(|s| s.to_string())
                .unwrap_or_default();
        }
    }
    let pairs: Vec<naming::Pair<'_>> = prompt_pairs
        .iter()
        .map(|(r, p, prefix)| (r.name.as_str(), p.name.as_str(), *prefix))
        .collect();
    let names = naming::expose_with(&pairs, &settings.separator);
    for ((route, prompt, _), exposed) in prompt_pairs.iter().zip(names) {
        let mut p = (*prompt).clone();
        p.name = exposed.clone();
        catalog.entries.push(CatalogEntry {
            kind: "prompt",
            exposed: exposed.clone(),
            server: route.name.clone(),
            upstream: prompt.name.clone(),
            description: prompt.description.clone(),
            pin: None,
            hidden: None,
        });
        catalog.prompts.push(p);
        catalog
            .prompt_routes
            .insert(exposed, (route.clone(), prompt.name.clone()));
    }
    // Who owns each exposed name; names of servers that are down now keep
    // their last owner (so a call to one says the server is not available).
    for (kind, routes) in [&catalog.tool_routes, &catalog.prompt_routes].into_iter().enumerate() {
        let mut owners: HashMap<String, String> = routes
            .iter()
            .map(|(exposed, (route, _))| (exposed.clone(), route.name.clone()))
            .collect();
        for (exposed, server) in &owners_before[kind] {
            if catalog.unavailable.contains_key(server) && !owners.contains_key(exposed) {
                owners.insert(exposed.clone(), server.clone());
            }
        }
        catalog.owners[kind] = owners;
    }
    catalog.fingerprints = [
        fingerprint(
            tool_pairs
                .iter()
                .zip(&catalog.tools)
                .map(|((_, _, sha, _), t)| format!("{}:{sha}", t.name)),
        ),
        fingerprint(
            catalog
                .resources
                .iter()
                .map(|r| r.uri.as_str())
                .chain(catalog.templates.iter().map(|t| t.uri_template.as_str())),
        ),
        fingerprint(catalog.prompts.iter().map(|p| p.name.as_str())),
    ];
    catalog
}
