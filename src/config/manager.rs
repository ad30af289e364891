//! Manager settings (DESIGN 3.4): the `manager:` section of a YAML config file.
//! Defaults are good enough that no section is needed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerSettings {
    pub discovery: DiscoverySettings,
    pub reconcile: ReconcileSettings,
    pub health_monitoring: HealthSettings,
    pub recovery: RecoverySettings,
    pub performance: PerformanceSettings,
    pub storage: StorageSettings,
    pub api: ApiSettings,
    pub gateway: GatewaySettings,
    /// Where servers run: here, or in a Kubernetes cluster.
    pub backend: Backend,
    /// The cluster of `backend: kubernetes`, and defaults for `render kubernetes`.
    #[serde(skip_serializing_if = "KubernetesDefaults::is_empty")]
    pub kubernetes: KubernetesDefaults,
    pub security: SecuritySettings,
    pub limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
}

impl ManagerSettings {
    /// Folds the places one setting may be given in into one (`storage.log_level`
    /// into `log_level`, Python's level names into ours) and expands `~` in paths.
    /// Fails when one setting is given twice with different values.
    pub fn resolve(mut self) -> Result<Self, String> {
        let level = |l: Option<String>| l.map(|l| canonical_log_level(&l).to_string());
        self.log_level = level(self.log_level.take());
        self.storage.log_level = level(self.storage.log_level.take());
        for (name, top, storage) in [
            ("log_level", &mut self.log_level, self.storage.log_level.take()),
            ("log_file", &mut self.log_file, self.storage.log_file.take()),
        ] {
            match (top.as_ref(), storage) {
                (Some(a), Some(b)) if *a != b => {
                    return Err(format!(
                        "`{name}` is given twice, at the top and under `storage`, with different values; keep one"
                    ));
                }
                (None, Some(b)) => *top = Some(b),
                _ => {}
            }
        }
        for path in [
            &mut self.log_file,
            &mut self.storage.state_file,
            &mut self.storage.state_dir,
            &mut self.kubernetes.kubeconfig,
        ]
        .into_iter()
        .flatten()
        {
            *path = expand_home(path);
        }
        for dir in &mut self.discovery.config_directories {
            *dir = expand_home(dir);
        }
        Ok(self)
    }
}

/// Our name for a log level written in any case, Python's names included.
pub fn canonical_log_level(level: &str) -> &'static str {
    match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "error" | "critical" | "fatal" => "error",
        _ => "info",
    }
}

/// `~` and `~/...` expanded to the home folder.
pub fn expand_home(path: &str) -> String {
    let rest = match path {
        "~" => "",
        p => match p.strip_prefix("~/") {
            Some(rest) => rest,
            None => return path.to_string(),
        },
    };
    match std::env::home_dir() {
        Some(home) => home.join(rest).to_string_lossy().into_owned(),
        None => path.to_string(),
    }
}

/// `true` enables every inferred server; a list enables those names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnableInferred {
    All(bool),
    Names(Vec<String>),
}

impl Default for EnableInferred {
    fn default() -> Self {
        EnableInferred::All(false)
    }
}

impl EnableInferred {
    pub fn enables(&self, name: &str) -> bool {
        match self {
            EnableInferred::All(all) => *all,
            EnableInferred::Names(names) => names.iter().any(|n| n == name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    pub enable_inferred: EnableInferred,
    pub max_depth: usize,
    pub exclude: Vec<String>,
    /// Folders scanned (and watched) in addition to `--config`; `~` is expanded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config_directories: Vec<String>,
    /// `false`: no folder is scanned; only the files named with `--config` (and
    /// the file holding these settings) are read.
    pub auto_discovery: bool,
    /// Re-scan the config this often, besides watching for changes (for file
    /// systems where change notification does not work).
    #[serde(default, with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub discovery_interval: Option<Duration>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            enable_inferred: EnableInferred::default(),
            max_depth: 8,
            exclude: Vec::new(),
            config_directories: Vec::new(),
            auto_discovery: true,
            discovery_interval: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileMode {
    #[default]
    Auto,
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    pub mode: ReconcileMode,
    #[serde(with = "duration")]
    pub debounce: Duration,
    pub mass_removal_guard: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            mode: ReconcileMode::Auto,
            debounce: Duration::from_millis(500),
            mass_removal_guard: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    pub enabled: bool,
    pub max_concurrent_health_checks: usize,
    /// `health_check_interval` of every server that does not set its own.
    #[serde(default, with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub global_health_check_interval: Option<Duration>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            enabled: true,
            max_concurrent_health_checks: 16,
            global_health_check_interval: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoverySettings {
    #[serde(with = "duration")]
    pub backoff_reset_after: Duration,
    pub jitter: f64,
    /// `auto_restart` of every server that does not set its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_auto_recovery: Option<bool>,
    /// How often servers that gave up (`failed`: their restart attempts ran
    /// out) get a new start. Unset: a failed server waits for a config change or
    /// `restart-server`.
    #[serde(default, with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub recovery_check_interval: Option<Duration>,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        RecoverySettings {
            backoff_reset_after: Duration::from_secs(600),
            jitter: 0.1,
            global_auto_recovery: None,
            recovery_check_interval: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerformanceSettings {
    pub max_startup_concurrency: usize,
}

impl Default for PerformanceSettings {
    fn default() -> Self {
        PerformanceSettings {
            max_startup_concurrency: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    pub event_log_size: usize,
    /// A JSON snapshot of the observed state is kept at this path (mode 0600,
    /// secrets fingerprinted), for tools that read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// The same as the top-level `log_level` (where the original tool had it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// The same as the top-level `log_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            state_dir: None,
            event_log_size: 10_000,
            state_file: None,
            log_level: None,
            log_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 0,
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Servers run as processes on this machine.
    #[default]
    Local,
    /// Servers run in the cluster of `manager.kubernetes`.
    Kubernetes,
}

/// `manager.kubernetes`: the cluster (`backend: kubernetes`), and where and
/// in what image servers go (also for `render kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesDefaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_url: Option<String>,
    /// The value of [`crate::kubernetes::INSTANCE_LABEL`] on our objects:
    /// configs sharing a namespace each see (and prune) only their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl KubernetesDefaults {
    pub fn is_empty(&self) -> bool {
        *self == KubernetesDefaults::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    pub tool_separator: String,
    /// `always`: every name is `SERVER__NAME`; `on_conflict`: names as the
    /// servers wrote them, prefixed only where two servers offer the same one.
    pub prefix: PrefixMode,
    /// Items per page of `tools/list` and the other lists (0: pages of at most
    /// 256 KiB).
    pub page_size: usize,
    /// A gateway session without a request this long is closed (read at start).
    #[serde(with = "duration")]
    pub session_idle_timeout: std::time::Duration,
    /// At most this many gateway sessions at once; a new one beyond is refused
    /// (HTTP 503) until one ends or idles out.
    pub max_sessions: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            tool_separator: "__".into(),
            prefix: PrefixMode::Always,
            session_idle_timeout: std::time::Duration::from_secs(30 * 60),
            max_sessions: 1000,
            page_size: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    #[default]
    Always,
    OnConflict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ToolPinning {
    Off,
    #[default]
    Warn,
    Enforce,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    pub tool_pinning: ToolPinning,
}

/// Bounds on what reading config files may cost (time and memory stay linear in
/// the input, and bounded). A file over a limit is an error naming the limit; the
/// last good config keeps running. The schema caps each limit (a file found in a
/// cloned repository can raise them only so far); [`Limits::capped`] holds the
/// same caps for values that did not come through the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest config file read, in bytes.
    pub max_file_size: u64,
    /// Deepest nesting of objects/arrays (mappings/sequences) in a file.
    pub max_nesting: usize,
    /// Most servers one file may declare (explicit and inferred).
    pub max_servers_per_file: usize,
    /// Most YAML alias uses (`*name`) in a file.
    pub max_yaml_aliases: usize,
    /// Most that YAML aliases may add to a document, in bytes (estimated: each
    /// copied value counts its text plus a fixed overhead).
    pub max_yaml_alias_bytes: u64,
}

impl Limits {
    /// The largest values the limits may take (the schema's maximums).
    pub const MAX: Limits = Limits {
        max_file_size: 64 << 20,
        max_nesting: 256,
        max_servers_per_file: 100_000,
        max_yaml_aliases: 1_000_000,
        max_yaml_alias_bytes: 256 << 20,
    };

    /// These limits, none above [`Limits::MAX`]: the parsers recurse up to
    /// `max_nesting` levels, which must fit in a thread's stack.
    pub fn capped(&self) -> Limits {
        Limits {
            max_file_size: self.max_file_size.min(Self::MAX.max_file_size),
            max_nesting: self.max_nesting.min(Self::MAX.max_nesting),
            max_servers_per_file: self.max_servers_per_file.min(Self::MAX.max_servers_per_file),
            max_yaml_aliases: self.max_yaml_aliases.min(Self::MAX.max_yaml_aliases),
            max_yaml_alias_bytes: self.max_yaml_alias_bytes.min(Self::MAX.max_yaml_alias_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 4 << 20,
            max_nesting: 64,
            max_servers_per_file: 10_000,
            max_yaml_aliases: 10_000,
            max_yaml_alias_bytes: 16 << 20,
        }
    }
}
