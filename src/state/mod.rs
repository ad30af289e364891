//! Observed state (DESIGN 4.1), kept in sled in the state dir.
//!
//! Architecture invariant: observed state holds spec *views* (secrets fingerprinted),
//! never raw specs, so the state dir never contains a secret value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::DesiredServer;
use crate::config::view::{SpecView, stable_hash};

/// A server instance's lifecycle phase (DESIGN 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Starting,
    Running,
    Stopping,
    #[default]
    Stopped,
    Backoff,
    Failed,
    /// Also what a phase this version does not know reads as.
    #[serde(other)]
    Unknown,
}

impl Phase {
    /// Whether the server is meant to be up: running, on its way, or about to retry.
    /// `Unknown` (after a manager restart, before re-checking) counts as up.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Pending | Phase::Starting | Phase::Running | Phase::Backoff | Phase::Unknown
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Backoff => "backoff",
            Phase::Failed => "failed",
            Phase::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
    Critical,
    /// Also what a health this version does not know reads as.
    #[default]
    #[serde(other)]
    Unknown,
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub ok: bool,
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One tool as a server describes it, with a hash of its definition (for pinning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub sha256: String,
}

/// What a server offers, as last listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub server_name: String,
    pub server_version: String,
    pub protocol_version: String,
    pub tools: Vec<ToolInfo>,
    pub resources: Vec<String>,
    pub prompts: Vec<String>,
}

/// Which instance: a server name and a replica index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    pub server: String,
    pub replica: u32,
    /// Which start of the server this instance belongs to: a restart or rolling
    /// replace makes a new generation, so late events of old instances are told
    /// apart.
    pub generation: u64,
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.replica == 0 {
            write!(f, "{}", self.server)
        } else {
            write!(f, "{}#{}", self.server, self.replica)
        }
    }
}

/// A process the manager started, recorded so a later run can clean it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub replica: u32,
    pub pid: u32,
    pub start_time: Option<u64>,
}

/// What is known about one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ObservedServer {
    pub phase: Phase,
    pub health: Health,
    /// Stopped by hand (`stop-server`): the reconciler leaves it down.
    pub suspended: bool,
    /// The spec it runs with (view: secrets fingerprinted).
    pub applied: Option<SpecView>,
    /// Hash of `applied` (see [`crate::config::DesiredServer::spec_hash`]).
    pub spec_hash: Option<String>,
    pub replicas: u32,
    pub restart_count: u32,
    pub last_error: Option<String>,
    pub pid: Option<u32>,
    /// Process start time (clock ticks since boot, /proc/PID/stat field 22), to tell
    /// a reused pid from ours.
    pub process_start_time: Option<u64>,
    /// Unix time in milliseconds of the last change.
    pub updated_at_ms: u64,
    /// The processes running now (pid + start time), for recovery after a crash
    /// of the manager.
    pub instances: Vec<InstanceRecord>,
    /// How the last process ended ("exit status 1", "killed by signal 9").
    pub last_exit: Option<String>,
    /// Recent health probes, oldest first (bounded).
    pub recent_health: Vec<ProbeResult>,
    /// Tools, resources and prompts as last listed.
    pub capabilities: Option<Capabilities>,
    /// Unix time in milliseconds since which it has been running.
    pub running_since_ms: Option<u64>,
}

impl ObservedServer {
    /// Records the spec a server was started with.
    pub fn set_applied(&mut self, desired: &DesiredServer) {
        self.applied = Some(desired.view.clone());
        self.spec_hash = Some(desired.spec_hash.clone());
    }
}

/// The observed state of every server the manager knows about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ObservedState {
    pub servers: BTreeMap<String, ObservedServer>,
}

impl ObservedState {
    /// A hash of what the planner reads (not health, which never makes a plan stale).
    pub fn plan_hash(&self) -> String {
        let relevant: BTreeMap<&str, (bool, bool, bool, &Option<String>)> = self
            .servers
            .iter()
            .map(|(name, s)| {
                (
                    name.as_str(),
                    (s.phase.is_active(), s.phase == Phase::Failed, s.suspended, &s.spec_hash),
                )
            })
            .collect();
        stable_hash(&relevant)
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Phase,
    Health,
    Crash,
    Config,
    ConfigError,
    Plan,
    Command,
    Recovery,
    Tools,
}

/// One entry of the bounded, append-only event log (and of `GET /events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state store in {dir} is in use by another mcp-manager process (is the service running?)")]
    Locked { dir: PathBuf },
    #[error("cannot open the state store in {dir}")]
    Open {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot create the state dir {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("the state store is closed after an IO error and could not be reopened yet")]
    Closed,
    #[error("corrupt record for server `{name}` in the state store")]
    Corrupt {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The pinned definition of one tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinRecord {
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input_schema: serde_json::Value,
    /// Title, annotations and output schema, where the tool had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Value>,
    pub pinned_at_ms: u64,
    /// The changed definition last reported, so a change is reported once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_sha256: Option<String>,
}

/// The sled database under the state dir.
///
/// sled keeps failing after one IO error (a full disk, a file size limit), even
/// once the cause is gone; so an operation that meets an IO error reopens the
/// database (at most once a second) and tries once more. Writes that failed
/// meanwhile are the caller's to repeat (the reconciler keeps the truth in
/// memory and saves it again).
pub struct StateStore {
    trees: std::sync::RwLock<Option<Trees>>,
    state_dir: PathBuf,
    /// When a reopen was last tried.
    last_reopen: std::sync::Mutex<Option<std::time::Instant>>,
    /// How many events the log holds: `Tree::len` walks the whole tree, which
    /// on every append (10,000 entries) was work on the reconcile loop.
    event_count: std::sync::atomic::AtomicUsize,
    /// Why the store cannot be trusted, if it was found damaged on open.
    damage: Option<String>,
    /// Where the check file lives (see [`Check`]).
    check_path: PathBuf,
}

/// The open database and its trees.
#[derive(Clone)]
struct Trees {
    servers: sled::Tree,
    events: sled::Tree,
    /// Tool pins, keyed `SERVER` NUL `TOOL` (gateway::pins).
    pins: sled::Tree,
    db: sled::Db,
}

const DB_DIR: &str = "state.sled";
const CHECK_FILE: &str = "state.check";

/// What the store held at its last flush, kept beside it (written only after
/// a flush succeeded, so the store on disk holds at least this much). Both
/// figures only grow: events are trimmed from the oldest end and pins are
/// never removed. A store that opens with less lost data, whatever sled says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Check {
    last_event: u64,
    pins: usize,
}

impl Trees {
    fn open(db: sled::Db) -> Result<Trees, StateError> {
        Ok(Trees {
            servers: db.open_tree("servers")?,
            events: db.open_tree("events")?,
            pins: db.open_tree("pins")?,
            db,
        })
    }
}

impl StateStore {
    /// Opens (creating if needed) the store in `state_dir`, which is made private (0700).
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StateError::CreateDir {
                dir: state_dir.to_path_buf(),
                source,
            })?;
        crate::fsutil::make_private(state_dir, 0o700);
        let check_path = state_dir.join(CHECK_FILE);
        let (store, mut damage) = match Self::open_db(state_dir, check_path.clone()) {
            Ok(store) => (store, None),
            Err(StateError::Locked { dir }) => return Err(StateError::Locked { dir }),
            Err(e) => {
                // Unreadable: keep it for a post-mortem, start afresh, and say so.
                let aside = Self::set_aside(state_dir, true)?;
                let why = format!(
                    "the state store could not be opened ({}); it was moved to {} and a new one started",
                    error_chain(&e),
                    aside.display()
                );
                let store = Self::open_db(state_dir, check_path.clone())?;
                (store, Some(why))
            }
        };
        if damage.is_none()
            && let Some(lost) = store.lost_data()
        {
            let copy = Self::set_aside(state_dir, false)?;
            damage = Some(format!(
                "{lost}; a copy of the damaged store was kept at {}",
                copy.display()
            ));
            // Reported now (and kept in the event log): the next start
            // compares with what this one found.
            store.write_check(store.check());
        }
        Ok(StateStore { damage, ..store })
    }

    fn open_db(state_dir: &Path, check_path: PathBuf) -> Result<Self, StateError> {
        let db = sled::Config::new()
            .path(state_dir.join(DB_DIR))
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
                {
                    StateError::Locked {
                        dir: state_dir.to_path_buf(),
                    }
                }
                _ => StateError::Open {
                    dir: state_dir.to_path_buf(),
                    source,
                },
            })?;
        let trees = Trees::open(db)?;
        // Counted once here; kept current by `append_event`.
        let event_count = std::sync::atomic::AtomicUsize::new(trees.events.len());
        Ok(StateStore {
            trees: std::sync::RwLock::new(Some(trees)),
            state_dir: state_dir.to_path_buf(),
            last_reopen: std::sync::Mutex::new(None),
            event_count,
            damage: None,
            check_path,
        })
    }

    /// Runs `op` on the trees; on an IO error, reopens the database and runs it
    /// once more.
    fn with<T>(&self, op: impl Fn(&Trees) -> Result<T, StateError>) -> Result<T, StateError> {
        // The clone is dropped before a reopen: it holds the database (and
        // its file lock) open.
        let first = match self.trees() {
            Some(trees) => op(&trees),
            None => Err(StateError::Closed),
        };
        match first {
            Err(StateError::Sled(sled::Error::Io(_)) | StateError::Closed) => {
                if !self.reopen() {
                    return first;
                }
                match self.trees() {
                    Some(trees) => op(&trees),
                    None => first,
                }
            }
            other => other,
        }
    }

    fn trees(&self) -> Option<Trees> {
        // A poisoned lock only means a reopen panicked; the value is still whole.
        self.trees.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the database and opens it again, at most once a second. Returns
    /// whether it is open now.
    fn reopen(&self) -> bool {
        {
            let mut last = self.last_reopen.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        let mut slot = self.trees.write().unwrap_or_else(|e| e.into_inner());
        // The old handle must be gone (and its file lock with it) before
        // opening again; clones held by callers end with their operations.
        *slot = None;
        let reopened = sled::Config::new()
            .path(self.state_dir.join(DB_DIR))
            .open()
            .map_err(StateError::from)
            .and_then(Trees::open);
        match reopened {
            Ok(trees) => {
                self.event_count
                    .store(trees.events.len(), std::sync::atomic::Ordering::Relaxed);
                *slot = Some(trees);
                tracing::info!("the state store was reopened after an IO error");
                true
            }
            Err(e) => {
                tracing::debug!("reopening the state store: {}", error_chain(&e));
                false
            }
        }
    }

    /// Moves (or copies) the store's folder aside as `state.sled.damaged-MS`.
    fn set_aside(state_dir: &Path, mv: bool) -> Result<PathBuf, StateError> {
        let from = state_dir.join(DB_DIR);
        let to = state_dir.join(format!("{DB_DIR}.damaged-{}", crate::now_ms()));
        let io = |source| StateError::CreateDir {
            dir: to.clone(),
            source,
        };
        if mv {
            std::fs::rename(&from, &to).map_err(io)?;
        } else {
            std::fs::create_dir_all(&to).map_err(io)?;
            for entry in std::fs::read_dir(&from).map_err(io)? {
                let entry = entry.map_err(io)?;
                if entry.file_type().map_err(io)?.is_file() {
                    std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(io)?;
                }
            }
        }
        Ok(to)
    }

    /// What the store should hold (its check file) against what it holds.
    fn lost_data(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.check_path).ok()?;
        let Ok(expected) = serde_json::from_str::<Check>(&text) else {
            return Some(format!("its check file {} is unreadable", self.check_path.display()));
        };
        let now = self.check();
        (now.last_event < expected.last_event || now.pins < expected.pins).then(|| {
            format!(
                "the state store lost data: it holds events up to #{} and {} tool pins, but held events up to #{} and {} tool pins before (restart counts, history and pins may be gone)",
                now.last_event, now.pins, expected.last_event, expected.pins
            )
        })
    }

    fn check(&self) -> Check {
        let Some(trees) = self.trees() else {
            return Check::default();
        };
        let last_event = trees
            .events
            .last()
            .ok()
            .flatten()
            .and_then(|(key, _)| <[u8; 8]>::try_from(key.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Check {
            last_event,
            pins: trees.pins.len(),
        }
    }

    /// Why the store cannot be trusted (found damaged when opened), if so.
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// Whether a store exists in `state_dir` (without creating one).
    pub fn exists(state_dir: &Path) -> bool {
        state_dir.join(DB_DIR).exists()
    }

    /// The observed state. A record that cannot be read is skipped (and
    /// named in the log): the server is then treated as never seen.
    pub fn load(&self) -> Result<ObservedState, StateError> {
        self.with(|trees| {
            let mut state = ObservedState::default();
            for item in trees.servers.iter() {
                let (key, value) = item?;
                let name = String::from_utf8_lossy(&key).into_owned();
                match serde_json::from_slice(&value) {
                    Ok(server) => {
                        state.servers.insert(name, server);
                    }
                    Err(source) => {
                        let e = StateError::Corrupt { name, source };
                        tracing::error!("{}; skipped", error_chain(&e));
                    }
                }
            }
            Ok(state)
        })
    }

    pub fn put_server(&self, name: &str, server: &ObservedServer) -> Result<(), StateError> {
        // Serializing a struct of plain data to JSON cannot fail.
        let bytes = serde_json::to_vec(server).expect("observed state serializes");
        self.with(|trees| {
            trees.servers.insert(name.as_bytes(), bytes.as_slice())?;
            Ok(())
        })
    }

    pub fn remove_server(&self, name: &str) -> Result<(), StateError> {
        self.with(|trees| {
            trees.servers.remove(name.as_bytes())?;
            Ok(())
        })
    }

    /// Appends an event (its `seq` is assigned here) and trims the log to `keep`.
    pub fn append_event(&self, event: EventRecord, keep: usize) -> Result<EventRecord, StateError> {
        self.with(|trees| {
            let mut event = event.clone();
            event.seq = trees.db.generate_id()?;
            // Serializing a struct of plain data to JSON cannot fail.
            let bytes = serde_json::to_vec(&event).expect("events serialize");
            use std::sync::atomic::Ordering::Relaxed;
            if trees.events.insert(event.seq.to_be_bytes(), bytes)?.is_none() {
                self.event_count.fetch_add(1, Relaxed);
            }
            let count = self.event_count.load(Relaxed);
            // Trim in batches, oldest first (keys are sequence numbers), so the
            // common append does no extra work.
            if count > keep + keep / 10 + 1 {
                let excess = count - keep;
                let mut removed = 0;
                let mut trim = || -> Result<(), StateError> {
                    for key in trees.events.iter().keys().take(excess) {
                        if trees.events.remove(key?)?.is_some() {
                            removed += 1;
                        }
                    }
                    Ok(())
                };
                let result = trim();
                // Counted also when the trim stopped half way, so the count stays true.
                self.event_count.fetch_sub(removed, Relaxed);
                result?;
            }
            Ok(event)
        })
    }

    /// The last `n` events, oldest first.
    pub fn recent_events(&self, n: usize) -> Result<Vec<EventRecord>, StateError> {
        self.recent_events_where(n, |_| true)
    }

    /// The last `n` events about `server`, oldest first (the log is bounded, so
    /// the scan is too).
    pub fn recent_events_of(&self, server: &str, n: usize) -> Result<Vec<EventRecord>, StateError> {
        self.recent_events_where(n, |e| e.server.as_deref() == Some(server))
    }

    fn recent_events_where(
        &self,
        n: usize,
        wanted: impl Fn(&EventRecord) -> bool,
    ) -> Result<Vec<EventRecord>, StateError> {
        self.with(|trees| {
            let mut out: Vec<EventRecord> = Vec::new();
            for item in trees.events.iter().rev() {
                if out.len() >= n {
                    break;
                }
                let (_, value) = item?;
                if let Ok(event) = serde_json::from_slice::<EventRecord>(&value)
                    && wanted(&event)
                {
                    out.push(event);
                }
            }
            out.reverse();
            Ok(out)
        })
    }

    /// One server's observed record, if it has one.
    pub fn server(&self, name: &str) -> Result<Option<ObservedServer>, StateError> {
        self.with(|trees| {
            Ok(trees
                .servers
                .get(name.as_bytes())?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
        })
    }

    /// Every tool pin: server → tool → record. Unreadable records are skipped (the
    /// tool is then pinned afresh).
    pub fn pins(&self) -> Result<BTreeMap<String, BTreeMap<String, PinRecord>>, StateError> {
        self.with(|trees| {
            let mut out: BTreeMap<String, BTreeMap<String, PinRecord>> = BTreeMap::new();
            for item in trees.pins.iter() {
                let (key, value) = item?;
                let key = String::from_utf8_lossy(&key);
                if let (Some((server, tool)), Ok(record)) = (key.split_once('\0'), serde_json::from_slice(&value)) {
                    out.entry(server.to_string())
                        .or_default()
                        .insert(tool.to_string(), record);
                }
            }
            Ok(out)
        })
    }

    pub fn put_pin(&self, server: &str, tool: &str, record: &PinRecord) -> Result<(), StateError> {
        // Serializing a struct of plain data to JSON cannot fail.
        let bytes = serde_json::to_vec(record).expect("pins serialize");
        self.with(|trees| {
            trees
                .pins
                .insert(format!("{server}\0{tool}").as_bytes(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Writes everything to disk, then records what is now safely there.
    pub fn flush(&self) -> Result<(), StateError> {
        let check = self.check();
        self.with(|trees| {
            trees.db.flush()?;
            Ok(())
        })?;
        self.write_check(check);
        Ok(())
    }

    /// [`StateStore::flush`] without blocking the caller's thread.
    pub async fn flush_async(&self) -> Result<(), StateError> {
        let check = self.check();
        let Some(trees) = self.trees() else {
            // Closed after an IO error: the next operation reopens it.
            return Err(StateError::Closed);
        };
        trees.db.flush_async().await?;
        self.write_check(check);
        Ok(())
    }

    fn write_check(&self, check: Check) {
        // Serializing two integers cannot fail.
        let bytes = serde_json::to_vec(&check).expect("the check serializes");
        if let Err(e) = crate::fsutil::write_atomically(&self.check_path, &bytes, 0o600) {
            tracing::warn!("cannot write {}: {e}", self.check_path.display());
        }
    }
}

/// An error with its causes: "cannot open …: IO error: No space left on device".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Where the key of secret fingerprints lives (64 hex digits, mode 0600).
pub fn secret_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("secret-key")
}

/// The install's fingerprint key, if the service has made one.
pub fn read_secret_key(state_dir: &Path) -> Option<crate::config::view::SecretKey> {
    let text = std::fs::read_to_string(secret_key_path(state_dir)).ok()?;
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// The install's fingerprint key, made (random, mode 0600) on first use.
pub fn ensure_secret_key(state_dir: &Path) -> std::io::Result<crate::config::view::SecretKey> {
    if let Some(key) = read_secret_key(state_dir) {
        crate::fsutil::make_private(&secret_key_path(state_dir), 0o600);
        return Ok(key);
    }
    let key = crate::config::random_key()?;
    crate::fsutil::write_atomically(
        &secret_key_path(state_dir),
        crate::config::view::hex(&key).as_bytes(),
        0o600,
    )?;
    Ok(key)
}

/// Reads observed state for planning without a running service: an absent store is
/// an empty state (and nothing is created).
pub fn read_observed(state_dir: &Path) -> Result<ObservedState, StateError> {
    if !StateStore::exists(state_dir) {
        return Ok(ObservedState::default());
    }
    // Without the damage check: that is the service's to make and report
    // (it moves the store aside and rewrites the check file).
    StateStore::open_db(state_dir, state_dir.join(CHECK_FILE))?.load()
}

/// The state dir: `$XDG_STATE_HOME/mcp-manager`, else `~/.local/state/mcp-manager`.
pub fn default_state_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("mcp-manager");
    }
    let home = std::env::home_dir().unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/mcp-manager")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_sled_and_reports_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_observed(dir.path()).unwrap(), ObservedState::default());
        assert!(!StateStore::exists(dir.path()), "reading must not create a store");
        let store = StateStore::open(dir.path()).unwrap();
        let server = ObservedServer {
            phase: Phase::Running,
            replicas: 1,
            restart_count: 2,
            ..Default::default()
        };
        store.put_server("a", &server).unwrap();
        store.flush().unwrap();
        assert_eq!(store.load().unwrap().servers["a"], server);
        let err = StateStore::open(dir.path())
            .err()
            .expect("second open must fail while locked");
        assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
        drop(store);
        assert_eq!(read_observed(dir.path()).unwrap().servers["a"].restart_count, 2);
    }

    #[test]
    fn the_event_log_is_bounded_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let event = |i: usize| EventRecord {
            seq: 0,
            at_ms: i as u64,
            kind: EventKind::Phase,
            server: Some("a".into()),
            message: format!("event {i}"),
            phase: Some(Phase::Running),
            health: None,
        };
        {
            let store = StateStore::open(dir.path()).unwrap();
            for i in 0..250 {
                store.append_event(event(i), 100).unwrap();
            }
            store.flush().unwrap();
        }
        // sled's flusher thread lets go of the file lock a moment after the
        // store is dropped: a reopen in the same process may find it held.
        let reopen = || {
            for _ in 0..100 {
                match StateStore::open(dir.path()) {
                    Err(StateError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(20)),
                    other => return other.unwrap(),
                }
            }
            StateStore::open(dir.path()).unwrap()
        };
        let store = reopen();
        let events = store.recent_events(1000).unwrap();
        assert!(events.len() >= 100 && events.len() <= 111, "{}", events.len());
        assert_eq!(events.last().unwrap().message, "event 249");
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        let next = store.append_event(event(250), 100).unwrap();
        assert!(
            next.seq > events.last().unwrap().seq,
            "sequence continues after a restart"
        );
    }

    #[test]
    fn plan_hash_ignores_health() {
        let mut a = ObservedState::default();
        a.servers.insert(
            "x".into(),
            ObservedServer {
                phase: Phase::Running,
                ..Default::default()
            },
        );
        let mut b = a.clone();
        b.servers.get_mut("x").unwrap().health = Health::Unhealthy;
        assert_eq!(a.plan_hash(), b.plan_hash());
        b.servers.get_mut("x").unwrap().suspended = true;
        assert_ne!(a.plan_hash(), b.plan_hash());
    }
}
