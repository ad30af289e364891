//! mcp-manager: declarative management of Model Context Protocol servers.
//!
//! See `ARCHITECTURE.md` for a map of the modules and the data flow.

pub mod cli;
pub mod task_runner;
