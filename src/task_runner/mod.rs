//! The built-in task-runner MCP server (DESIGN 5.5).
//!
//! `mcp-manager task-runner` serves seven tools over stdio: `create_project`,
//! `parse_task_list`, `run_task`, `run_all_tasks`, `get_task_status`,
//! `get_task_summary` and `clean`. A Markdown task list becomes one file per task;
//! each task runs through a fixed executor command (never chosen by a client) with
//! the task text on stdin.
//!
//! Layout, pure parts first:
//! - [`tasklist`]: Markdown parsing, slugs, file names (pure);
//! - [`command`]: splitting the executor command line (pure);
//! - [`paths`]: confining client paths to the base dir;
//! - [`status`]: the `.task-status.json` file;
//! - [`process`]: executor processes and their process groups;
//! - [`runner`]: the operations behind the tools, free of MCP;
//! - [`server`]: the rmcp server wiring the tools to the runner.
//!
//! Lifecycle: when the client closes stdin, rmcp gives in-flight calls up to 5 s to
//! finish, then [`serve_stdio`] kills the process group of every task still
//! running; SIGTERM or SIGINT kill them at once. If the server itself is killed, `PR_SET_PDEATHSIG` takes the executor
//! down with it, and the next server reports the task as failed with
//! `interrupted: true` (see [`status`]).

pub mod command;
pub mod error;
pub mod paths;
pub mod process;
pub mod runner;
pub mod server;
pub mod status;
pub mod tasklist;

use std::sync::Arc;

use rmcp::ServiceExt;

pub use command::{DEFAULT_EXECUTOR, ExecutorCommand};
pub use error::TaskRunnerError;
pub use runner::{DEFAULT_TIMEOUT, Runner, Settings};
pub use server::{SERVER_NAME, TaskRunnerServer};

/// Environment variable naming the executor command (the `--executor` flag wins).
pub const EXECUTOR_ENV: &str = "MCP_TASK_RUNNER_EXECUTOR";
/// Environment variable naming the base dir (the `--base-dir` flag wins).
pub const BASE_DIR_ENV: &str = "MCP_TASK_RUNNER_BASE_DIR";

/// Errors of serving the task runner.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Setup(#[from] TaskRunnerError),
    #[error("the MCP session could not start")]
    Initialize(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the MCP session ended abnormally")]
    Session(#[source] tokio::task::JoinError),
    #[error("{0}")]
    Listen(String),
    #[error("cannot watch for SIGTERM")]
    Signals(#[source] std::io::Error),
}

/// Serves the task runner on a network address, one MCP session per connection,
/// until the process is stopped: `tcp://HOST:PORT` (newline-delimited JSON-RPC)
/// or `ws://HOST:PORT` (WebSocket, subprotocol `mcp`). For testing and
/// benchmarking mcp-manager's remote transports against a known server.
pub async fn serve_listen(settings: Settings, listen: &str) -> Result<(), ServeError> {
    let (websocket, address) = match listen.split_once("://") {
        Some(("tcp", address)) => (false, address),
        Some(("ws", address)) => (true, address.trim_end_matches('/')),
        _ => {
            return Err(ServeError::Listen(format!(
                "`{listen}`: give tcp://HOST:PORT or ws://HOST:PORT"
            )));
        }
    };
    let runner = Arc::new(Runner::new(settings)?);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| ServeError::Listen(format!("cannot listen on {address}: {e}")))?;
    let local = listener.local_addr().map_err(|e| ServeError::Listen(e.to_string()))?;
    eprintln!("listening on {}://{local}", if websocket { "ws" } else { "tcp" });
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| ServeError::Listen(format!("accept: {e}")))?;
        let _ = stream.set_nodelay(true);
        let server = TaskRunnerServer::new(Arc::clone(&runner));
        tokio::spawn(async move {
            let session = if websocket {
                match crate::transport::websocket::accept(stream).await {
                    Ok(transport) => server.serve(transport).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                let (read, write) = stream.into_split();
                server.serve((read, write)).await.map_err(|e| e.to_string())
            };
            match session {
                Ok(service) => {
                    let _ = service.waiting().await;
                }
                Err(e) => tracing::debug!("a session did not start: {e}"),
            }
        });
    }
}

/// A parent that asked for a death signal (mcp-manager asks for SIGKILL) gets
/// SIGTERM instead, which the caller handles by killing every running task: a
/// SIGKILL would leave the executors' children running under init. Parents
/// that asked for nothing (a desktop client) are left as they are: the death
/// signal follows the spawning *thread*, which in other programs may end long
/// before the program does.
fn soften_death_signal() {
    let mut signal: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one c_int through the pointer we pass,
    // which points at a live local.
    let asked = unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut signal as *mut libc::c_int) } == 0 && signal != 0;
    if asked {
        // SAFETY: prctl with plain integer arguments.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
        }
    }
}

/// Serves the task runner on stdin/stdout until the client disconnects, then kills
/// whatever tasks are still running. Must run inside a Tokio runtime with IO enabled.
pub async fn serve_stdio(settings: Settings) -> Result<(), ServeError> {
    let runner = Arc::new(Runner::new(settings)?);
    let server = TaskRunnerServer::new(Arc::clone(&runner));
    // Non-blocking pipes when stdin/stdout are FIFOs (how MCP clients start us);
    // otherwise falls back to Tokio's blocking stdio handles.
    let transport = rmcp::transport::stdio_pipes();
    let service = server
        .serve(transport)
        .await
        .map_err(|err| ServeError::Initialize(Box::new(err)))?;
    // SIGTERM (how supervisors stop us) and SIGINT end the session too: the
    // executors run in process groups of their own, which a signal to our group
    // does not reach, so they are killed here before we go.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ServeError::Signals)?;
    soften_death_signal();
    let cancel = service.cancellation_token();
    let waiting = service.waiting();
    tokio::pin!(waiting);
    let quit = tokio::select! {
        quit = &mut waiting => quit.map(|_| ()).map_err(ServeError::Session),
        _ = terminate.recv() => { runner.kill_all(); cancel.cancel(); Ok(()) }
        _ = tokio::signal::ctrl_c() => { runner.kill_all(); cancel.cancel(); Ok(()) }
    };
    runner.kill_all();
    quit
}
