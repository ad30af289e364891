//! The built-in task-runner MCP server (DESIGN 5.5).
