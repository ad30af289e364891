//! mcp-manager: declarative management of Model Context Protocol servers.
//!
//! See `ARCHITECTURE.md` for a map of the modules and the data flow.

pub mod backoff;
pub mod cli;
pub mod clients;
pub mod config;
pub mod discovery;
pub mod fsutil;
pub mod gateway;
pub mod health;
pub mod kubernetes;
pub mod metrics;
pub mod plan;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod task_runner;
pub mod terminal;
pub mod transport;

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
pub mod api;
pub mod reconciler;
pub mod service;
pub mod watch;
