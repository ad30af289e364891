//! mcp-manager: declarative management of Model Context Protocol servers.
//!
//! See `ARCHITECTURE.md` for a map of the modules and the data flow.

pub mod cli;
pub mod config;
pub mod discovery;
pub mod plan;
pub mod state;
pub mod supervisor;
pub mod task_runner;
