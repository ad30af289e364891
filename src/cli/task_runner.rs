//! `mcp-manager task-runner`: the built-in task-runner MCP server over stdio.

use std::process::ExitCode;

/// Arguments of `mcp-manager task-runner`.
#[derive(Debug, clap::Args)]
pub struct TaskRunnerArgs {}

pub fn run(_args: TaskRunnerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the task runner is being built in issue 3")
}
