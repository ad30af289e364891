//! Errors of the task runner. Every one of them becomes an MCP tool error
//! (`isError: true`) with this message; none of them stops the server.

use std::path::PathBuf;

/// What can go wrong in a task-runner tool call or at server start.
#[derive(Debug, thiserror::Error)]
pub enum TaskRunnerError {
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),

    #[error("cancelled by the client; its task was stopped")]
    Cancelled,

    #[error("invalid path `{path}`: {reason}")]
    UnsafePath { path: String, reason: &'static str },

    #[error("`{path}` resolves outside the base dir")]
    OutsideBaseDir { path: String },

    #[error("`{0}` does not exist")]
    NotFound(String),

    #[error("`{0}` is not a directory")]
    NotADirectory(String),

    #[error("`{0}` is not a task file (expected a name like `001_slug.md`)")]
    NotATaskFile(String),

    #[error("no tasks found in `{0}`: expected `## Task N: title` sections or `- [ ] item` lines")]
    NoTasks(String),

    #[error("no task files in `{0}`: parse a task list first")]
    NoTaskFiles(String),

    #[error("too many tasks ({0}); at most 999 are supported")]
    TooManyTasks(usize),

    #[error(
        "`{dir}` already has {count} task file(s); pass `overwrite: true` to replace them (this also clears their status and results)"
    )]
    TasksExist { dir: String, count: usize },

    #[error("task `{0}` is already running")]
    AlreadyRunning(String),

    #[error("a run_all_tasks call is already running in `{0}`")]
    RunAllInProgress(String),

    #[error("invalid executor command: {0}")]
    InvalidExecutor(String),

    #[error("base dir `{path}` is not usable")]
    BaseDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{action} `{path}` failed")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("status file `{path}` is corrupt")]
    CorruptStatus {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl TaskRunnerError {
    /// Shorthand for an IO error on a path shown to the client.
    pub(crate) fn io(action: &'static str, path: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The message shown to an MCP client: the error and its causes, once each.
    pub fn client_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}
