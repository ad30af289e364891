//! The task runner's operations, one per tool, independent of MCP: arguments in,
//! serializable results out. The MCP layer (`server.rs`) only wires them up.
//!
//! Paths in arguments are relative to the tool's `base_dir` (itself relative to the
//! server's base dir, which it defaults to); paths in results are relative to the
//! server's base dir, except task names, which are file names inside `project_dir`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::command::ExecutorCommand;
use super::error::TaskRunnerError;
use super::paths::BaseDir;
use super::process::{self, Finish};
use super::status::{self, STATUS_FILE, StatusFile, TaskRecord, TaskState};
use super::tasklist::{self, ParsedList};

/// The default per-task timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest `timeout_seconds` accepted: one day.
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;
/// The largest task list read.
const MAX_TASK_LIST_BYTES: u64 = 4 * 1024 * 1024;
/// How much of a result `run_task` returns.
const OUTPUT_HEAD_BYTES: usize = 4000;
/// How much of each result `run_all_tasks` returns.
const RUN_ALL_OUTPUT_HEAD_BYTES: usize = 500;
/// How much of a failed task's log `get_task_summary` returns.
const LOG_TAIL_BYTES: u64 = 2000;
const LOG_TAIL_LINES: usize = 20;
/// How long `clean` waits for a killed task to be reaped.
const CLEAN_WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Arguments. `deny_unknown_fields`: a misspelt or unexpected argument (such as an
// attempt to pass an executor) is an error, not silently ignored.

/// Arguments of `create_project`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectArgs {
    /// Name of the project folder to create: letters, digits, `.`, `_` and `-`,
    /// starting with a letter or digit.
    pub project_name: String,
    /// Markdown task list to parse into the new project folder (relative to
    /// `base_dir`).
    #[serde(default)]
    pub task_list_path: Option<String>,
    /// Folder to create the project in, relative to the server's base dir (default:
    /// the base dir itself).
    #[serde(default)]
    pub base_dir: Option<String>,
    /// Replace task files the project folder already has (default false).
    #[serde(default)]
    pub overwrite: Option<bool>,
}

/// Arguments of `parse_task_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParseTaskListArgs {
    /// Markdown task list, relative to `base_dir`: `## Task N: Title` sections or
    /// `- [ ] item` lines.
    pub task_list_path: String,
    /// Project folder to write the task files into, relative to the server's base dir
    /// (default: the base dir itself).
    #[serde(default)]
    pub base_dir: Option<String>,
    /// Replace existing task files, their results and status (default false).
    #[serde(default)]
    pub overwrite: Option<bool>,
}

/// Arguments of `run_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTaskArgs {
    /// Task file (`001_slug.md`), relative to `base_dir`.
    pub task_path: String,
    /// Project folder, relative to the server's base dir (default: the base dir).
    #[serde(default)]
    pub base_dir: Option<String>,
    /// Kill the task after this many seconds (1 to 86400, default 300).
    #[serde(default)]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<u64>,
}

/// Arguments of `run_all_tasks`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunAllTasksArgs {
    /// Project folder, relative to the server's base dir (default: the base dir).
    #[serde(default)]
    pub base_dir: Option<String>,
    /// Skip tasks that already completed (default false: run every task).
    #[serde(default)]
    pub resume: Option<bool>,
    /// Go on with the next task after a failure (default false: stop at the first).
    #[serde(default)]
    pub continue_on_error: Option<bool>,
    /// Per-task timeout in seconds (1 to 86400, default 300).
    #[serde(default)]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<u64>,
}

/// Arguments of `get_task_status`, `get_task_summary` and `clean`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectArgs {
    /// Project folder, relative to the server's base dir (default: the base dir).
    #[serde(default)]
    pub base_dir: Option<String>,
}

// ---------------------------------------------------------------------------
// Results.

/// A task file written from a task list.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskInfo {
    pub index: usize,
    /// The task file name, e.g. `001_set-up.md`.
    pub task: String,
    pub title: String,
}

/// Result of `create_project`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreateProjectOutput {
    /// The project folder, relative to the server's base dir.
    pub project_dir: String,
    /// False when the folder existed already.
    pub created: bool,
    pub tasks: Vec<TaskInfo>,
    pub skipped_checked: usize,
}

/// Result of `parse_task_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ParseTaskListOutput {
    pub project_dir: String,
    pub task_list: String,
    pub tasks: Vec<TaskInfo>,
    /// Checklist items already checked (`- [x]`), not turned into tasks.
    pub skipped_checked: usize,
}

/// Result of one task run.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunTaskOutput {
    pub project_dir: String,
    /// The task file name inside `project_dir`.
    pub task: String,
    pub status: TaskState,
    pub exit_code: Option<i32>,
    /// The signal that ended the executor, if one did.
    pub signal: Option<i32>,
    pub duration_ms: u64,
    /// The executor's pid, which is also its process group id.
    pub pid: Option<u32>,
    /// The executor's stdout, relative to `project_dir`.
    pub result_file: String,
    /// The executor's stderr plus a closing line from the task runner.
    pub log_file: String,
    /// The first part of the executor's stdout.
    pub output_head: String,
    pub output_truncated: bool,
    /// Why the run failed when the exit code does not say it.
    pub error: Option<String>,
}

/// Result of `run_all_tasks`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunAllTasksOutput {
    pub project_dir: String,
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// Tasks skipped because they had completed (with `resume`).
    pub skipped: Vec<String>,
    /// Tasks not run because the run stopped early.
    pub not_run: Vec<String>,
    /// True when a failure stopped the run (without `continue_on_error`) or `clean`
    /// cancelled it.
    pub stopped_early: bool,
    /// The runs, in order (output heads shortened).
    pub results: Vec<RunTaskOutput>,
}

/// One task in `get_task_status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskStatusEntry {
    pub task: String,
    pub title: String,
    pub status: TaskState,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    /// Seconds since the Unix epoch.
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The executor's process group while running.
    pub pid: Option<u32>,
    pub error: Option<String>,
    /// True when a task runner stopped while this task ran.
    pub interrupted: bool,
}

/// Result of `get_task_status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskStatusOutput {
    pub project_dir: String,
    pub tasks: Vec<TaskStatusEntry>,
}

/// A failed task in `get_task_summary`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FailureEntry {
    pub task: String,
    pub status: TaskState,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The last lines of the task's log.
    pub log_tail: String,
}

/// Result of `get_task_summary`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskSummaryOutput {
    pub project_dir: String,
    pub total: usize,
    pub pending: usize,
    pub running: usize,
    pub completed: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// Sum of the recorded durations.
    pub total_duration_ms: u64,
    pub failures: Vec<FailureEntry>,
}

/// Result of `clean`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CleanOutput {
    pub project_dir: String,
    /// Running tasks that were killed.
    pub killed: Vec<String>,
    /// Files removed, relative to `project_dir`.
    pub removed: Vec<String>,
}

/// A progress step of `run_all_tasks`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub message: String,
}

// ---------------------------------------------------------------------------
// Bookkeeping of what this server runs.

/// Something running: a task (keyed by its file) or a `run_all_tasks` (keyed by its
/// project folder).
struct Active {
    pgid: Option<u32>,
    cancel: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct Registry {
    tasks: HashMap<PathBuf, Active>,
    runs: HashMap<PathBuf, Active>,
}

#[derive(Clone, Copy)]
enum Kind {
    Task,
    Run,
}

/// Unregisters an active task or run when dropped (also when the handler future is
/// dropped midway), killing the task's process group if it was not finished.
struct ActiveGuard<'a> {
    runner: &'a Runner,
    kind: Kind,
    key: PathBuf,
    pgid: Option<u32>,
    finished: bool,
    done: watch::Sender<bool>,
}

impl ActiveGuard<'_> {
    fn set_pgid(&mut self, pgid: Option<u32>) {
        self.pgid = pgid;
        let mut registry = self.runner.registry();
        if let Some(active) = registry.tasks.get_mut(&self.key) {
            active.pgid = pgid;
        }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        if !self.finished
            && let Some(pgid) = self.pgid
        {
            process::kill_group(pgid);
        }
        let mut registry = self.runner.registry();
        match self.kind {
            Kind::Task => registry.tasks.remove(&self.key),
            Kind::Run => registry.runs.remove(&self.key),
        };
        drop(registry);
        let _ = self.done.send(true);
    }
}

/// Settings of a task-runner server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_dir: PathBuf,
    pub executor: ExecutorCommand,
    pub default_timeout: Duration,
}

/// The task runner: confined to one base dir, running one executor command.
pub struct Runner {
    base: BaseDir,
    executor: ExecutorCommand,
    default_timeout: Duration,
    registry: std::sync::Mutex<Registry>,
    /// Serializes read-modify-write cycles of status files.
    status_lock: tokio::sync::Mutex<()>,
}

impl Runner {
    pub fn new(settings: Settings) -> Result<Self, TaskRunnerError> {
        Ok(Self {
            base: BaseDir::open(&settings.base_dir)?,
            executor: settings.executor,
            default_timeout: settings.default_timeout,
            registry: std::sync::Mutex::default(),
            status_lock: tokio::sync::Mutex::const_new(()),
        })
    }

    /// The canonical base dir.
    pub fn base_dir(&self) -> &Path {
        self.base.root()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock leaves the maps consistent (every update
        // is a single insert or remove), so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, kind: Kind, key: &Path) -> Option<(ActiveGuard<'_>, watch::Receiver<bool>)> {
        let mut registry = self.registry();
        let map = match kind {
            Kind::Task => &mut registry.tasks,
            Kind::Run => &mut registry.runs,
        };
        if map.contains_key(key) {
            return None;
        }
        let (cancel, cancel_rx) = watch::channel(false);
        let (done, done_rx) = watch::channel(false);
        map.insert(
            key.to_path_buf(),
            Active {
                pgid: None,
                cancel,
                done: done_rx,
            },
        );
        let guard = ActiveGuard {
            runner: self,
            kind,
            key: key.to_path_buf(),
            pgid: None,
            finished: false,
            done,
        };
        Some((guard, cancel_rx))
    }

    /// Kills every task this server runs (used when the server shuts down).
    pub fn kill_all(&self) {
        let registry = self.registry();
        for active in registry.tasks.values() {
            let _ = active.cancel.send(true);
            if let Some(pgid) = active.pgid {
                process::kill_group(pgid);
            }
        }
        for active in registry.runs.values() {
            let _ = active.cancel.send(true);
        }
    }

    fn timeout(&self, seconds: Option<u64>) -> Result<Duration, TaskRunnerError> {
        match seconds {
            None => Ok(self.default_timeout),
            Some(s) if (1..=MAX_TIMEOUT_SECONDS).contains(&s) => Ok(Duration::from_secs(s)),
            Some(s) => Err(TaskRunnerError::InvalidArguments(format!(
                "timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}, got {s}"
            ))),
        }
    }

    // -- status file helpers ------------------------------------------------

    /// Loads a project's status with stale `running` entries settled.
    fn load_status(&self, project: &Path) -> Result<StatusFile, TaskRunnerError> {
        let shown = self.base.display(&status::status_path(project));
        let mut status = status::load(project, &shown)?;
        let registry = self.registry();
        status.settle_stale(
            std::process::id(),
            |task| registry.tasks.contains_key(&project.join(task)),
            status::process_alive,
        );
        Ok(status)
    }

    /// Applies `change` to a project's status file under the status lock.
    async fn update_status<T>(
        &self,
        project: &Path,
        change: impl FnOnce(&mut StatusFile) -> Result<T, TaskRunnerError>,
    ) -> Result<T, TaskRunnerError> {
        let _lock = self.status_lock.lock().await;
        let mut status = self.load_status(project)?;
        let value = change(&mut status)?;
        let shown = self.base.display(&status::status_path(project));
        status::save(project, &shown, &status)?;
        Ok(value)
    }

    // -- create_project / parse_task_list -------------------------------------

    pub async fn create_project(&self, args: CreateProjectArgs) -> Result<CreateProjectOutput, TaskRunnerError> {
        check_project_name(&args.project_name)?;
        let from = self.base.resolve_dir(args.base_dir.as_deref())?;
        let list = match &args.task_list_path {
            Some(path) => Some(self.read_task_list(&from, path)?),
            None => None,
        };
        let project = self.base.resolve(&from, &args.project_name)?;
        let shown = self.base.display(&project);
        let created = match std::fs::metadata(&project) {
            Ok(metadata) if metadata.is_dir() => false,
            Ok(_) => return Err(TaskRunnerError::NotADirectory(shown)),
            Err(_) => {
                std::fs::create_dir(&project).map_err(|err| TaskRunnerError::io("creating", shown.clone(), err))?;
                true
            }
        };
        let (tasks, skipped_checked) = match list {
            Some((_, parsed)) => {
                let skipped = parsed.skipped_checked;
                let tasks = self
                    .write_tasks(&project, parsed, args.overwrite.unwrap_or(false))
                    .await?;
                (tasks, skipped)
            }
            None => (Vec::new(), 0),
        };
        Ok(CreateProjectOutput {
            project_dir: shown,
            created,
            tasks,
            skipped_checked,
        })
    }

    pub async fn parse_task_list(&self, args: ParseTaskListArgs) -> Result<ParseTaskListOutput, TaskRunnerError> {
        let project = self.base.resolve_dir(args.base_dir.as_deref())?;
        let (task_list, parsed) = self.read_task_list(&project, &args.task_list_path)?;
        let skipped_checked = parsed.skipped_checked;
        let tasks = self
            .write_tasks(&project, parsed, args.overwrite.unwrap_or(false))
            .await?;
        Ok(ParseTaskListOutput {
            project_dir: self.base.display(&project),
            task_list,
            tasks,
            skipped_checked,
        })
    }

    /// Reads and parses a task list; errors when it holds no task.
    fn read_task_list(&self, from: &Path, arg: &str) -> Result<(String, ParsedList), TaskRunnerError> {
        let path = self.base.resolve(from, arg)?;
        let shown = self.base.display(&path);
        let metadata = std::fs::metadata(&path).map_err(|_| TaskRunnerError::NotFound(arg.into()))?;
        if !metadata.is_file() {
            return Err(TaskRunnerError::InvalidArguments(format!(
                "task list `{arg}` is not a file"
            )));
        }
        if metadata.len() > MAX_TASK_LIST_BYTES {
            return Err(TaskRunnerError::InvalidArguments(format!(
                "task list `{arg}` is larger than {MAX_TASK_LIST_BYTES} bytes"
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|err| TaskRunnerError::io("reading", shown.clone(), err))?;
        let parsed = tasklist::parse_task_list(&text);
        if parsed.tasks.is_empty() {
            return Err(TaskRunnerError::NoTasks(shown));
        }
        if parsed.tasks.len() > tasklist::MAX_TASKS {
            return Err(TaskRunnerError::TooManyTasks(parsed.tasks.len()));
        }
        Ok((shown, parsed))
    }

    /// Writes one file per task into `project`, first clearing old tasks when
    /// `overwrite` allows it.
    async fn write_tasks(
        &self,
        project: &Path,
        parsed: ParsedList,
        overwrite: bool,
    ) -> Result<Vec<TaskInfo>, TaskRunnerError> {
        let shown = self.base.display(project);
        let existing = list_tasks(project, &shown)?;
        if !existing.is_empty() {
            if !overwrite {
                return Err(TaskRunnerError::TasksExist {
                    dir: shown,
                    count: existing.len(),
                });
            }
            if let Some(running) = self.active_tasks_in(project).first() {
                return Err(TaskRunnerError::AlreadyRunning(running.clone()));
            }
            let _lock = self.status_lock.lock().await;
            for task in &existing {
                for name in task_files(task) {
                    remove_if_present(&project.join(&name), &shown)?;
                }
            }
            remove_if_present(&status::status_path(project), &shown)?;
        }
        let mut tasks = Vec::with_capacity(parsed.tasks.len());
        for (i, task) in parsed.tasks.into_iter().enumerate() {
            let index = i + 1;
            let name = tasklist::task_file_name(index, &task.title);
            let path = project.join(&name);
            status::write_atomically(&path, task.file_text().as_bytes())
                .map_err(|err| TaskRunnerError::io("writing", self.base.display(&path), err))?;
            tasks.push(TaskInfo {
                index,
                task: name,
                title: task.title,
            });
        }
        Ok(tasks)
    }

    // -- run_task / run_all_tasks ---------------------------------------------

    pub async fn run_task(&self, args: RunTaskArgs) -> Result<RunTaskOutput, TaskRunnerError> {
        let from = self.base.resolve_dir(args.base_dir.as_deref())?;
        let timeout = self.timeout(args.timeout_seconds)?;
        let path = self.base.resolve(&from, &args.task_path)?;
        let metadata = std::fs::metadata(&path).map_err(|_| TaskRunnerError::NotFound(args.task_path.clone()))?;
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !metadata.is_file() || !tasklist::is_task_file_name(&name) {
            return Err(TaskRunnerError::NotATaskFile(args.task_path));
        }
        let project = path.parent().unwrap_or(self.base.root()).to_path_buf();
        self.run_one(&project, &name, timeout, OUTPUT_HEAD_BYTES).await
    }

    /// Runs one task of `project`, recording its status.
    async fn run_one(
        &self,
        project: &Path,
        task: &str,
        timeout: Duration,
        head_bytes: usize,
    ) -> Result<RunTaskOutput, TaskRunnerError> {
        let task_path = project.join(task);
        let shown_project = self.base.display(project);
        let (mut guard, mut cancel) = self
            .register(Kind::Task, &task_path)
            .ok_or_else(|| TaskRunnerError::AlreadyRunning(task.to_string()))?;
        // Refuse a task another live server is running in the same folder.
        {
            let _lock = self.status_lock.lock().await;
            let status = self.load_status(project)?;
            let own_pid = std::process::id();
            if status
                .tasks
                .get(task)
                .is_some_and(|record| record.status == TaskState::Running && record.runner_pid != Some(own_pid))
            {
                return Err(TaskRunnerError::AlreadyRunning(task.to_string()));
            }
        }
        let text = std::fs::read_to_string(&task_path)
            .map_err(|err| TaskRunnerError::io("reading", self.base.display(&task_path), err))?;
        let stem = tasklist::task_stem(task).unwrap_or(task).to_string();
        let result_name = tasklist::result_file_name(&stem);
        let log_name = tasklist::log_file_name(&stem);
        let result_path = project.join(&result_name);
        let log_path = project.join(&log_name);
        let stdout = fresh_file(&result_path, &self.base)?;
        let stderr = fresh_file(&log_path, &self.base)?;

        let started_at = unix_now();
        let started = Instant::now();
        let mut output = RunTaskOutput {
            project_dir: shown_project,
            task: task.to_string(),
            status: TaskState::Failed,
            exit_code: None,
            signal: None,
            duration_ms: 0,
            pid: None,
            result_file: result_name,
            log_file: log_name,
            output_head: String::new(),
            output_truncated: false,
            error: None,
        };
        let child = process::spawn(&self.executor, project, &task_path, text, stdout, stderr);
        let mut child = match child {
            Ok(child) => child,
            Err(err) => {
                let message = format!("failed to start executor `{}`: {err}", self.executor.program);
                append_log(&log_path, &format!("[task-runner] {message}\n"));
                output.error = Some(message);
                self.record_finish(project, task, started_at, &output).await?;
                return Ok(output);
            }
        };
        output.pid = child.id();
        guard.set_pgid(output.pid);
        let pid = output.pid;
        self.update_status(project, |status| {
            status.tasks.insert(
                task.to_string(),
                TaskRecord::running(started_at, std::process::id(), pid),
            );
            Ok(())
        })
        .await?;

        let finish = process::wait(&mut child, timeout, &mut cancel).await;
        guard.finished = true;
        output.duration_ms = duration_ms(started.elapsed());
        let seconds = started.elapsed().as_secs_f64();
        let trailer = match &finish {
            Ok(Finish::Exited(exit)) => {
                output.exit_code = exit.code();
                output.signal = exit.signal();
                output.status = if exit.success() {
                    TaskState::Completed
                } else {
                    TaskState::Failed
                };
                match (exit.code(), exit.signal()) {
                    (Some(code), _) => format!("exited with code {code} after {seconds:.2}s"),
                    (None, Some(signal)) => {
                        format!("killed by signal {signal} after {seconds:.2}s")
                    }
                    (None, None) => format!("ended after {seconds:.2}s"),
                }
            }
            Ok(Finish::TimedOut) => {
                output.status = TaskState::TimedOut;
                output.error = Some(format!(
                    "timed out after {}s; the process group was killed",
                    timeout.as_secs()
                ));
                format!(
                    "timed out after {}s; process group {} killed",
                    timeout.as_secs(),
                    pid.unwrap_or(0)
                )
            }
            Ok(Finish::Cancelled) => {
                output.error = Some("cancelled by clean".into());
                return Ok(output);
            }
            Err(err) => {
                output.error = Some(format!("waiting for the executor failed: {err}"));
                format!("waiting for the executor failed: {err}")
            }
        };
        append_log(&log_path, &format!("[task-runner] {trailer}\n"));
        let (head, truncated) = read_head(&result_path, head_bytes);
        output.output_head = head;
        output.output_truncated = truncated;
        self.record_finish(project, task, started_at, &output).await?;
        Ok(output)
    }

    async fn record_finish(
        &self,
        project: &Path,
        task: &str,
        started_at: u64,
        output: &RunTaskOutput,
    ) -> Result<(), TaskRunnerError> {
        let record = TaskRecord {
            status: output.status,
            exit_code: output.exit_code,
            duration_ms: Some(output.duration_ms),
            started_at: Some(started_at),
            finished_at: Some(unix_now()),
            error: output.error.clone(),
            runner_pid: None,
            pgid: None,
            interrupted: false,
        };
        self.update_status(project, |status| {
            status.tasks.insert(task.to_string(), record);
            Ok(())
        })
        .await
    }

    /// Runs every task of a project in order. Progress steps go to `progress` when
    /// given: one before each task and one at the end.
    pub async fn run_all_tasks(
        &self,
        args: RunAllTasksArgs,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Result<RunAllTasksOutput, TaskRunnerError> {
        let project = self.base.resolve_dir(args.base_dir.as_deref())?;
        let timeout = self.timeout(args.timeout_seconds)?;
        let resume = args.resume.unwrap_or(false);
        let continue_on_error = args.continue_on_error.unwrap_or(false);
        let shown = self.base.display(&project);
        let (_guard, cancel) = self
            .register(Kind::Run, &project)
            .ok_or_else(|| TaskRunnerError::RunAllInProgress(shown.clone()))?;
        let tasks = list_tasks(&project, &shown)?;
        if tasks.is_empty() {
            return Err(TaskRunnerError::NoTaskFiles(shown));
        }
        let status = {
            let _lock = self.status_lock.lock().await;
            self.load_status(&project)?
        };
        let total = tasks.len();
        let send = |done: usize, message: String| {
            if let Some(progress) = &progress {
                let _ = progress.send(Progress { done, total, message });
            }
        };
        let mut output = RunAllTasksOutput {
            project_dir: shown,
            total,
            completed: 0,
            failed: 0,
            timed_out: 0,
            skipped: Vec::new(),
            not_run: Vec::new(),
            stopped_early: false,
            results: Vec::new(),
        };
        for (i, task) in tasks.iter().enumerate() {
            if output.stopped_early || *cancel.borrow() {
                output.stopped_early = true;
                output.not_run.push(task.clone());
                continue;
            }
            let completed = status
                .tasks
                .get(task)
                .is_some_and(|record| record.status == TaskState::Completed);
            if resume && completed {
                output.skipped.push(task.clone());
                send(i, format!("skipping {task} (completed)"));
                continue;
            }
            send(i, format!("running {task} ({}/{total})", i + 1));
            let result = match self.run_one(&project, task, timeout, RUN_ALL_OUTPUT_HEAD_BYTES).await {
                Ok(result) => result,
                Err(err) => RunTaskOutput {
                    project_dir: output.project_dir.clone(),
                    task: task.clone(),
                    status: TaskState::Failed,
                    exit_code: None,
                    signal: None,
                    duration_ms: 0,
                    pid: None,
                    result_file: String::new(),
                    log_file: String::new(),
                    output_head: String::new(),
                    output_truncated: false,
                    error: Some(err.client_message()),
                },
            };
            match result.status {
                TaskState::Completed => output.completed += 1,
                TaskState::TimedOut => output.timed_out += 1,
                _ => output.failed += 1,
            }
            if result.status != TaskState::Completed && !continue_on_error {
                output.stopped_early = true;
            }
            output.results.push(result);
        }
        let finished = output.skipped.len() + output.results.len();
        send(finished, format!("finished: {finished} of {total} tasks"));
        Ok(output)
    }

    // -- status / summary / clean -----------------------------------------------

    pub async fn task_status(&self, args: ProjectArgs) -> Result<TaskStatusOutput, TaskRunnerError> {
        let project = self.base.resolve_dir(args.base_dir.as_deref())?;
        let shown = self.base.display(&project);
        let tasks = list_tasks(&project, &shown)?;
        let status = {
            let _lock = self.status_lock.lock().await;
            self.load_status(&project)?
        };
        let entries = tasks
            .into_iter()
            .map(|task| {
                let title = read_title(&project.join(&task));
                match status.tasks.get(&task) {
                    Some(record) => TaskStatusEntry {
                        task,
                        title,
                        status: record.status,
                        exit_code: record.exit_code,
                        duration_ms: record.duration_ms,
                        started_at: record.started_at,
                        finished_at: record.finished_at,
                        pid: record.pgid,
                        error: record.error.clone(),
                        interrupted: record.interrupted,
                    },
                    None => TaskStatusEntry {
                        task,
                        title,
                        status: TaskState::Pending,
                        exit_code: None,
                        duration_ms: None,
                        started_at: None,
                        finished_at: None,
                        pid: None,
                        error: None,
                        interrupted: false,
                    },
                }
            })
            .collect();
        Ok(TaskStatusOutput {
            project_dir: shown,
            tasks: entries,
        })
    }

    pub async fn task_summary(&self, args: ProjectArgs) -> Result<TaskSummaryOutput, TaskRunnerError> {
        let status = self.task_status(args).await?;
        let project = self.base.root().join(&status.project_dir);
        let mut summary = TaskSummaryOutput {
            project_dir: status.project_dir,
            total: status.tasks.len(),
            pending: 0,
            running: 0,
            completed: 0,
            failed: 0,
            timed_out: 0,
            total_duration_ms: 0,
            failures: Vec::new(),
        };
        for entry in status.tasks {
            summary.total_duration_ms += entry.duration_ms.unwrap_or(0);
            match entry.status {
                TaskState::Pending => summary.pending += 1,
                TaskState::Running => summary.running += 1,
                TaskState::Completed => summary.completed += 1,
                TaskState::Failed => summary.failed += 1,
                TaskState::TimedOut => summary.timed_out += 1,
            }
            if matches!(entry.status, TaskState::Failed | TaskState::TimedOut) {
                let stem = tasklist::task_stem(&entry.task).unwrap_or(&entry.task);
                let log = project.join(tasklist::log_file_name(stem));
                summary.failures.push(FailureEntry {
                    log_tail: read_tail(&log),
                    task: entry.task,
                    status: entry.status,
                    exit_code: entry.exit_code,
                    error: entry.error,
                });
            }
        }
        Ok(summary)
    }

    /// Task file names this server runs in `project`.
    fn active_tasks_in(&self, project: &Path) -> Vec<String> {
        let registry = self.registry();
        registry
            .tasks
            .keys()
            .filter(|path| path.parent() == Some(project))
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect()
    }

    pub async fn clean(&self, args: ProjectArgs) -> Result<CleanOutput, TaskRunnerError> {
        let project = self.base.resolve_dir(args.base_dir.as_deref())?;
        let shown = self.base.display(&project);
        // Cancel what this server runs here, then wait until each run has finished
        // its bookkeeping, so nothing writes a status or result file after we
        // removed it.
        let (mut killed, waits) = {
            let registry = self.registry();
            let mut killed = Vec::new();
            let mut waits = Vec::new();
            let runs = registry.runs.get(&project).into_iter();
            let tasks = registry
                .tasks
                .iter()
                .filter(|(path, _)| path.parent() == Some(project.as_path()))
                .inspect(|(path, _)| {
                    if let Some(name) = path.file_name() {
                        killed.push(name.to_string_lossy().into_owned());
                    }
                })
                .map(|(_, active)| active);
            for active in runs.chain(tasks) {
                let _ = active.cancel.send(true);
                waits.push(active.done.clone());
            }
            (killed, waits)
        };
        for mut done in waits {
            let _ = tokio::time::timeout(CLEAN_WAIT, done.wait_for(|done| *done)).await;
        }
        killed.sort();

        let _lock = self.status_lock.lock().await;
        let entries = std::fs::read_dir(&project).map_err(|err| TaskRunnerError::io("listing", shown.clone(), err))?;
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| TaskRunnerError::io("listing", shown.clone(), err))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if is_dir || !is_generated_file(&name) {
                continue;
            }
            remove_if_present(&entry.path(), &shown)?;
            removed.push(name);
        }
        removed.sort();
        Ok(CleanOutput {
            project_dir: shown,
            killed,
            removed,
        })
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

/// Checks a project folder name: one plain path component.
pub fn check_project_name(name: &str) -> Result<(), TaskRunnerError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && name.len() <= 100 {
        Ok(())
    } else {
        Err(TaskRunnerError::InvalidArguments(format!(
            "project_name `{name}` must be 1 to 100 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        )))
    }
}

/// Whether `name` is a file the task runner writes into a project folder (and
/// `clean` removes): the status file, its temp files, and task results and logs.
pub fn is_generated_file(name: &str) -> bool {
    if name == STATUS_FILE {
        return true;
    }
    if name.starts_with(&format!(".{STATUS_FILE}.")) && name.ends_with(".tmp") {
        return true;
    }
    let stem = name.strip_suffix(".result.md").or_else(|| name.strip_suffix(".log"));
    stem.is_some_and(|stem| tasklist::is_task_file_name(&format!("{stem}.md")))
}

/// The files belonging to a task: the task file, its result and its log.
fn task_files(task: &str) -> Vec<String> {
    let stem = tasklist::task_stem(task).unwrap_or(task);
    vec![
        task.to_string(),
        tasklist::result_file_name(stem),
        tasklist::log_file_name(stem),
    ]
}

/// Task file names in `project`, sorted. Only regular files count (not symlinks).
fn list_tasks(project: &Path, shown: &str) -> Result<Vec<String>, TaskRunnerError> {
    let entries = std::fs::read_dir(project).map_err(|err| TaskRunnerError::io("listing", shown.to_string(), err))?;
    let mut tasks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| TaskRunnerError::io("listing", shown.to_string(), err))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if tasklist::is_task_file_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            tasks.push(name);
        }
    }
    tasks.sort();
    Ok(tasks)
}

fn remove_if_present(path: &Path, shown: &str) -> Result<(), TaskRunnerError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(TaskRunnerError::io("removing a file in", shown.to_string(), err)),
    }
}

/// Creates `path` afresh: whatever was there (a symlink included) is removed first,
/// and `create_new` refuses to follow anything planted in between.
fn fresh_file(path: &Path, base: &BaseDir) -> Result<std::fs::File, TaskRunnerError> {
    let shown = base.display(path);
    remove_if_present(path, &shown)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|err| TaskRunnerError::io("creating", shown, err))
}

fn append_log(path: &Path, line: &str) {
    // Best effort: the log is for people; a failure here must not fail the run.
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

/// The first `limit` bytes of a file as text, and whether there was more.
fn read_head(path: &Path, limit: usize) -> (String, bool) {
    let Ok(file) = std::fs::File::open(path) else {
        return (String::new(), false);
    };
    let mut bytes = Vec::new();
    let limit_plus_one = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    if file.take(limit_plus_one).read_to_end(&mut bytes).is_err() {
        return (String::new(), false);
    }
    let truncated = bytes.len() > limit;
    bytes.truncate(limit);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if truncated {
        // A multi-byte character cut in half decodes to U+FFFD at the end.
        while text.ends_with('\u{FFFD}') {
            text.pop();
        }
    }
    (text, truncated)
}

/// The last lines of a log file.
fn read_tail(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// The heading of a task file (its first line without `# `).
fn read_title(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("# ").unwrap_or(first).trim().to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn duration_ms(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_single_plain_components() {
        for name in ["alpha", "beta-2", "v1.0_rc", "A"] {
            assert!(check_project_name(name).is_ok(), "{name}");
        }
        for name in ["", ".hidden", "-x", "a/b", "..", "a b", "ä", &"x".repeat(101)] {
            assert!(check_project_name(name).is_err(), "{name}");
        }
    }

    #[test]
    fn only_generated_files_are_cleaned() {
        for name in [
            ".task-status.json",
            "..task-status.json.123.tmp",
            "001_a.result.md",
            "002_b-c.log",
        ] {
            assert!(is_generated_file(name), "{name}");
        }
        for name in ["001_a.md", "tasks.md", "notes.log", "x.result.md", "README.md"] {
            assert!(!is_generated_file(name), "{name}");
        }
    }

    #[test]
    fn read_head_cuts_at_the_limit_without_half_characters() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out");
        std::fs::write(&path, "aé")?;
        assert_eq!(read_head(&path, 2), ("a".to_string(), true));
        assert_eq!(read_head(&path, 3), ("aé".to_string(), false));
        Ok(())
    }

    #[test]
    fn read_tail_keeps_the_last_lines() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text)?;
        let tail = read_tail(&path);
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
        Ok(())
    }
}
