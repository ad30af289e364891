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
    pub security: SecuritySettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
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
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            enable_inferred: EnableInferred::default(),
            max_depth: 8,
            exclude: Vec::new(),
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
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            enabled: true,
            max_concurrent_health_checks: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoverySettings {
    #[serde(with = "duration")]
    pub backoff_reset_after: Duration,
    pub jitter: f64,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        RecoverySettings {
            backoff_reset_after: Duration::from_secs(600),
            jitter: 0.1,
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
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            state_dir: None,
            event_log_size: 10_000,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    pub tool_separator: String,
    /// Items per page of `tools/list` and the other lists (0: one page).
    pub page_size: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            tool_separator: "__".into(),
            page_size: 0,
        }
    }
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
