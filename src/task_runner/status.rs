//! The status file of a project folder: `.task-status.json`, one entry per task file
//! that has run at least once. Written atomically (temp file + rename).
//!
//! A task without an entry is pending. An entry says `running` only while a server
//! runs the task; the entry records that server's pid. A `running` entry whose
//! server is gone (the runner was killed mid-task) is reported as `failed` with
//! `interrupted: true` and an error saying so, and it is rewritten that way the next
//! time the file is saved. `run_all_tasks` with `resume` runs it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::TaskRunnerError;

/// The status file's name inside a project folder.
pub const STATUS_FILE: &str = ".task-status.json";

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Running,
    Completed,
    Failed,
    TimedOut,
}

/// What is recorded about one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub status: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Why the task failed when there is no exit code to tell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The task runner's pid while `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_pid: Option<u32>,
    /// The executor's process group while `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    /// Set when a server stopped while the task was running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl TaskRecord {
    /// A record for a task that has just started.
    pub fn running(started_at: u64, runner_pid: u32, pgid: Option<u32>) -> Self {
        Self {
            status: TaskState::Running,
            exit_code: None,
            duration_ms: None,
            started_at: Some(started_at),
            finished_at: None,
            error: None,
            runner_pid: Some(runner_pid),
            pgid,
            interrupted: false,
        }
    }
}

/// The whole status file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    pub version: u32,
    /// Task file name → record.
    pub tasks: BTreeMap<String, TaskRecord>,
}

impl StatusFile {
    pub const VERSION: u32 = 1;

    /// Marks `running` entries that nobody runs any more as interrupted failures.
    /// An entry of this server (`own_pid`) is live when `active_here(task)` says this
    /// server still runs it; another server's entry is live while `alive(pid)`.
    pub fn settle_stale(&mut self, own_pid: u32, active_here: impl Fn(&str) -> bool, alive: impl Fn(u32) -> bool) {
        for (task, record) in &mut self.tasks {
            if record.status != TaskState::Running {
                continue;
            }
            let live = match record.runner_pid {
                Some(pid) if pid == own_pid => active_here(task),
                Some(pid) => alive(pid),
                None => false,
            };
            if !live {
                record.status = TaskState::Failed;
                record.interrupted = true;
                record.error = Some("interrupted: the task runner stopped while the task ran".into());
                record.runner_pid = None;
                record.pgid = None;
            }
        }
    }
}

/// The status file path of a project folder.
pub fn status_path(project: &Path) -> PathBuf {
    project.join(STATUS_FILE)
}

/// Reads the status file of `project`; an absent file is an empty status.
pub fn load(project: &Path, shown_as: &str) -> Result<StatusFile, TaskRunnerError> {
    let path = status_path(project);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(StatusFile::default()),
        Err(err) => return Err(TaskRunnerError::io("reading", shown_as, err)),
    };
    serde_json::from_str(&text).map_err(|source| TaskRunnerError::CorruptStatus {
        path: shown_as.to_string(),
        source,
    })
}

/// Writes the status file of `project` atomically.
pub fn save(project: &Path, shown_as: &str, status: &StatusFile) -> Result<(), TaskRunnerError> {
    let mut status = status.clone();
    status.version = StatusFile::VERSION;
    let mut text = serde_json::to_string_pretty(&status).map_err(|source| TaskRunnerError::CorruptStatus {
        path: shown_as.to_string(),
        source,
    })?;
    text.push('\n');
    write_atomically(&status_path(project), text.as_bytes())
        .map_err(|err| TaskRunnerError::io("writing", shown_as, err))
}

/// Writes `bytes` to a temp file next to `path` and renames it over `path`. The
/// rename replaces whatever `path` was (a symlink included) instead of following it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fsutil::write_atomically(path, bytes, 0o666)
}

/// Whether a process with this pid exists (signal 0 probe).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pid: u32) -> TaskRecord {
        TaskRecord::running(1, pid, Some(pid + 1))
    }

    #[test]
    fn running_entries_of_dead_servers_become_interrupted_failures() {
        let mut status = StatusFile::default();
        status.tasks.insert("001_a.md".into(), running(10));
        status.tasks.insert("002_b.md".into(), running(20));
        status.tasks.insert("003_c.md".into(), running(30));
        status.tasks.insert("004_d.md".into(), running(30));
        status.settle_stale(30, |task| task == "003_c.md", |pid| pid == 20);

        let a = &status.tasks["001_a.md"];
        assert_eq!(a.status, TaskState::Failed);
        assert!(a.interrupted);
        assert_eq!(a.pgid, None);
        assert!(a.error.as_deref().is_some_and(|e| e.contains("interrupted")));
        assert_eq!(status.tasks["002_b.md"].status, TaskState::Running);
        assert_eq!(status.tasks["003_c.md"].status, TaskState::Running);
        assert_eq!(status.tasks["004_d.md"].status, TaskState::Failed);
    }

    #[test]
    fn status_round_trips_through_the_file() -> Result<(), TaskRunnerError> {
        let dir = tempfile::tempdir().map_err(|e| TaskRunnerError::io("creating", "tmp", e))?;
        assert_eq!(load(dir.path(), "x")?, StatusFile::default());
        let mut status = StatusFile::default();
        status.tasks.insert(
            "001_a.md".into(),
            TaskRecord {
                status: TaskState::TimedOut,
                duration_ms: Some(1000),
                ..running(1)
            },
        );
        save(dir.path(), "x", &status)?;
        let loaded = load(dir.path(), "x")?;
        assert_eq!(loaded.version, StatusFile::VERSION);
        assert_eq!(loaded.tasks, status.tasks);
        let text =
            std::fs::read_to_string(status_path(dir.path())).map_err(|e| TaskRunnerError::io("reading", "x", e))?;
        assert!(text.contains("\"timed_out\""), "{text}");
        Ok(())
    }

    #[test]
    fn a_corrupt_status_file_is_an_error_not_a_panic() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(status_path(dir.path()), "{not json")?;
        assert!(matches!(
            load(dir.path(), "x"),
            Err(TaskRunnerError::CorruptStatus { .. })
        ));
        Ok(())
    }

    #[test]
    fn atomic_writes_replace_a_symlink_instead_of_following_it() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("target");
        std::fs::write(&target, "keep")?;
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link)?;
        write_atomically(&link, b"new")?;
        assert_eq!(std::fs::read_to_string(&target)?, "keep");
        assert_eq!(std::fs::read_to_string(&link)?, "new");
        assert!(!std::fs::symlink_metadata(&link)?.file_type().is_symlink());
        Ok(())
    }
}
