//! The unified MCP endpoint (DESIGN 5.3): one MCP server over every healthy
//! managed server, served at `/mcp` (streamable HTTP) and on a local socket for
//! `mcp-manager connect`.
//!
//! - [`naming`]: exposed names, URI rewriting, globs, pagination (pure).
//! - [`pins`]: tool pinning checks and diffs (pure).
//! - [`metrics`]: per-server request counters and latency histograms (atomics).
//! - [`registry`]: the routing table instance actors attach to, and the catalog.
//! - [`relay`]: server → client traffic (server requests, progress, logs,
//!   resource updates) and the client sessions' log levels and subscriptions.
//! - [`server`]: the rmcp `ServerHandler` of one client session.

pub mod metrics;
pub mod naming;
pub mod pacer;
pub mod pins;
pub mod registry;
pub mod relay;
pub mod server;

pub use registry::Registry;
pub use server::GatewayServer;
