//! `mcp-manager task-runner`: the built-in task-runner MCP server over stdio.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::task_runner::{self, ExecutorCommand, Settings};

/// Arguments of `mcp-manager task-runner`.
#[derive(Debug, clap::Args)]
pub struct TaskRunnerArgs {
    /// Folder the server works in; every path a client gives must stay inside it.
    /// [default: the current directory]
    #[arg(long, value_name = "DIR", env = task_runner::BASE_DIR_ENV)]
    base_dir: Option<PathBuf>,

    /// Command that runs a task, reading the task text on stdin. Split into words
    /// on whitespace, with '...' and "..." quoting and no shell (use
    /// `sh -c '...'` for shell syntax).
    #[arg(
        long,
        value_name = "CMD",
        env = task_runner::EXECUTOR_ENV,
        default_value = task_runner::DEFAULT_EXECUTOR
    )]
    executor: String,

    /// Serve on the network instead of stdio, one session per connection:
    /// tcp://HOST:PORT (newline-delimited JSON-RPC) or ws://HOST:PORT (WebSocket).
    #[arg(long, value_name = "URL")]
    listen: Option<String>,
}

pub fn run(args: TaskRunnerArgs) -> anyhow::Result<ExitCode> {
    let executor = ExecutorCommand::parse(&args.executor)?;
    let base_dir = match args.base_dir {
        Some(dir) => dir,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    // A first run points at a folder nobody made yet: make it (and say so in the
    // server's log) rather than failing to start.
    if !base_dir.exists() {
        std::fs::create_dir_all(&base_dir)
            .with_context(|| format!("cannot create the base dir {}", base_dir.display()))?;
        eprintln!("created the base dir {}", base_dir.display());
    }
    let settings = Settings {
        base_dir,
        executor,
        default_timeout: task_runner::DEFAULT_TIMEOUT,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = match &args.listen {
        Some(listen) => runtime.block_on(task_runner::serve_listen(settings, listen)),
        None => runtime.block_on(task_runner::serve_stdio(settings)),
    };
    // A blocking stdin read (when stdin is not a pipe) cannot be cancelled; do not
    // let it hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}
