//! `mcp-manager task-runner` driven the way an MCP client drives it: the real binary
//! as a child process, rmcp's client over its stdin/stdout.
//!
//! No test depends on timing luck: waits poll with generous deadlines, and nothing
//! asserts how long something took.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rmcp::model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-manager");
/// Upper bound for anything a test waits for; reaching it means a bug, not slowness.
const PATIENCE: Duration = Duration::from_secs(60);

/// Records progress notifications.
#[derive(Clone, Default)]
struct TestClient {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for TestClient {
    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        if let Ok(mut progress) = self.progress.lock() {
            progress.push(params);
        }
    }
}

/// A task-runner child process and an MCP client session with it.
struct Server {
    child: tokio::process::Child,
    client: RunningService<RoleClient, TestClient>,
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    base: PathBuf,
    /// With `Launch::orphaned`: dropping it ends the thread that spawned the
    /// server, as if its parent had died.
    parent: Option<std::sync::mpsc::Sender<()>>,
}

/// How to start a server.
struct Launch<'a> {
    base: &'a Path,
    executor_flag: Option<&'a str>,
    executor_env: Option<&'a str>,
    /// Started as mcp-manager starts servers: with `PR_SET_PDEATHSIG` (SIGKILL)
    /// tied to a thread that ends right after, as if its parent had died.
    orphaned: bool,
}

impl<'a> Launch<'a> {
    fn with_executor(base: &'a Path, executor: &'a str) -> Self {
        Self {
            base,
            executor_flag: Some(executor),
            executor_env: None,
            orphaned: false,
        }
    }
}

impl Server {
    async fn start(launch: Launch<'_>) -> anyhow::Result<Self> {
        let mut command = tokio::process::Command::new(BIN);
        command
            .arg("task-runner")
            .arg("--base-dir")
            .arg(launch.base)
            .env_remove("MCP_TASK_RUNNER_EXECUTOR")
            .env_remove("MCP_TASK_RUNNER_BASE_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(executor) = launch.executor_flag {
            command.arg("--executor").arg(executor);
        }
        if let Some(executor) = launch.executor_env {
            command.env("MCP_TASK_RUNNER_EXECUTOR", executor);
        }
        let mut parent = None;
        let mut child = if launch.orphaned {
            // SAFETY: prctl is async-signal-safe and allocates nothing.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            // The death signal follows the spawning thread: spawn from one
            // that lives until `parent` is dropped.
            let runtime = tokio::runtime::Handle::current();
            let (spawned_tx, spawned) = std::sync::mpsc::channel();
            let (alive, until) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                let _entered = runtime.enter();
                let _ = spawned_tx.send(command.spawn());
                let _ = until.recv();
            });
            parent = Some(alive);
            spawned.recv().context("the spawning thread ended early")?
        } else {
            command.spawn()
        }
        .context("spawning mcp-manager task-runner")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let handler = TestClient::default();
        let progress = Arc::clone(&handler.progress);
        let client = tokio::time::timeout(PATIENCE, handler.serve((stdout, stdin)))
            .await
            .context("initialize timed out")??;
        Ok(Self {
            child,
            client,
            progress,
            base: launch.base.to_path_buf(),
            parent,
        })
    }

    /// Calls a tool; the result may be a tool error (`isError`).
    async fn call(&self, tool: &str, args: Value) -> anyhow::Result<CallToolResult> {
        call(&self.client, tool, args).await
    }

    /// Starts a tool call on its own task (to do something else while it runs).
    fn call_in_background(
        &self,
        tool: &'static str,
        args: Value,
    ) -> tokio::task::JoinHandle<Result<CallToolResult, rmcp::ServiceError>> {
        let peer = self.client.peer().clone();
        let args = args.as_object().cloned().unwrap_or_default();
        tokio::spawn(async move {
            peer.call_tool(CallToolRequestParams::new(tool).with_arguments(args))
                .await
        })
    }

    /// Calls a tool that must succeed and returns its structured content.
    async fn ok(&self, tool: &str, args: Value) -> anyhow::Result<Value> {
        let result = self.call(tool, args.clone()).await?;
        ensure!(result.is_error != Some(true), "{tool} {args} failed: {}", text(&result));
        result
            .structured_content
            .with_context(|| format!("{tool} returned no structured content"))
    }

    /// Calls a tool that must fail and returns its error message.
    async fn err(&self, tool: &str, args: Value) -> anyhow::Result<String> {
        let result = self.call(tool, args.clone()).await?;
        ensure!(
            result.is_error == Some(true),
            "{tool} {args} should have failed but returned {}",
            text(&result)
        );
        Ok(text(&result))
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.base.join(relative)
    }

    /// The status of one task as `get_task_status` reports it.
    async fn task_status(&self, task: &str) -> anyhow::Result<Value> {
        let status = self.ok("get_task_status", json!({})).await?;
        status["tasks"]
            .as_array()
            .and_then(|tasks| tasks.iter().find(|t| t["task"] == task))
            .cloned()
            .with_context(|| format!("{task} missing from {status}"))
    }

    /// Polls until `task` is running and returns its process group id.
    async fn wait_running(&self, task: &str) -> anyhow::Result<i32> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = self.task_status(task).await?;
            if status["status"] == "running"
                && let Some(pid) = status["pid"].as_i64()
            {
                return Ok(i32::try_from(pid)?);
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{task} never started running: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.client.cancel().await?;
        let _ = tokio::time::timeout(PATIENCE, self.child.wait()).await;
        Ok(())
    }
}

async fn call(
    client: &RunningService<RoleClient, TestClient>,
    tool: &str,
    args: Value,
) -> anyhow::Result<CallToolResult> {
    let Value::Object(args) = args else {
        bail!("tool arguments must be an object");
    };
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
    let result = tokio::time::timeout(PATIENCE, client.call_tool(params))
        .await
        .with_context(|| format!("{tool} timed out"))??;
    Ok(result)
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|block| block.as_text())
        .map(|block| block.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn names(value: &Value, key: &str) -> Vec<String> {
    value[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().or_else(|| item["task"].as_str()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Processes of a process group that are still alive (zombies do not count).
fn live_group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .collect()
}

async fn wait_group_gone(pgid: i32) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let live = live_group_members(pgid);
        if live.is_empty() {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "process group {pgid} still has live processes {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ECHO: &str = "sh -c 'cat; echo done'";
const THREE_TASKS: &str = "# Plan\n\n## Task 1: Set up the repo\nCreate it.\n\n## Task 2: Break things\nFAIL here.\n\n## Task 3: Write docs\nDocument it.\n";

#[tokio::test]
async fn lists_the_seven_tools_with_schemas_from_rust_types() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;

    let info = server.client.peer_info().context("no server info")?;
    let implementation = info.server_info.clone().context("no implementation")?;
    assert_eq!(implementation.name, "mcp-manager-task-runner");
    assert_eq!(implementation.version, env!("CARGO_PKG_VERSION"));

    let tools = server.client.list_all_tools().await?;
    let mut names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "clean",
            "create_project",
            "get_task_status",
            "get_task_summary",
            "parse_task_list",
            "run_all_tasks",
            "run_task",
        ]
    );
    for tool in &tools {
        let schema = Value::Object(tool.input_schema.as_ref().clone());
        assert_eq!(schema["type"], "object", "{}", tool.name);
        assert_eq!(schema["additionalProperties"], false, "{}", tool.name);
        assert!(
            !schema.to_string().contains("executor"),
            "a caller must not choose the executor: {schema}"
        );
        assert!(tool.output_schema.is_some(), "{} has no output schema", tool.name);
    }
    let run_task = tools.iter().find(|tool| tool.name == "run_task").context("run_task")?;
    let schema = Value::Object(run_task.input_schema.as_ref().clone());
    assert_eq!(schema["required"], json!(["task_path"]));
    assert_eq!(schema["properties"]["timeout_seconds"]["type"], "integer");
    assert_eq!(schema["properties"]["base_dir"]["type"], "string");
    server.stop().await
}

#[tokio::test]
async fn parse_task_list_turns_task_sections_into_numbered_files() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;

    let parsed = server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    assert_eq!(
        names(&parsed, "tasks"),
        ["001_set-up-the-repo.md", "002_break-things.md", "003_write-docs.md"]
    );
    assert_eq!(parsed["tasks"][0]["title"], "Set up the repo");
    assert_eq!(
        std::fs::read_to_string(server.path("001_set-up-the-repo.md"))?,
        "# Task 1: Set up the repo\n\nCreate it.\n"
    );
    // Parsing again would clobber the tasks: refused without overwrite.
    let error = server
        .err("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    assert!(error.contains("already has 3 task file(s)"), "{error}");
    server
        .ok(
            "parse_task_list",
            json!({"task_list_path": "tasks.md", "overwrite": true}),
        )
        .await?;
    server.stop().await
}

#[tokio::test]
async fn parse_task_list_accepts_plain_checklists() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(
        &base.path().join("todo/list.md"),
        "# Todo\n\n- [ ] Buy milk\n  two litres\n- [x] Already done\n- [ ] Call Bob\n",
    )?;
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;

    let parsed = server
        .ok(
            "parse_task_list",
            json!({"task_list_path": "list.md", "base_dir": "todo"}),
        )
        .await?;
    assert_eq!(parsed["project_dir"], "todo");
    assert_eq!(names(&parsed, "tasks"), ["001_buy-milk.md", "002_call-bob.md"]);
    assert_eq!(parsed["skipped_checked"], 1);
    assert_eq!(
        std::fs::read_to_string(server.path("todo/001_buy-milk.md"))?,
        "# Buy milk\n\ntwo litres\n"
    );
    server.stop().await
}

#[tokio::test]
async fn create_project_makes_the_folder_and_parses_the_list_into_it() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;

    let created = server
        .ok(
            "create_project",
            json!({"project_name": "alpha", "task_list_path": "tasks.md"}),
        )
        .await?;
    assert_eq!(created["project_dir"], "alpha");
    assert_eq!(created["created"], true);
    assert_eq!(created["tasks"].as_array().map(Vec::len), Some(3));
    assert!(server.path("alpha/002_break-things.md").is_file());

    let status = server.ok("get_task_status", json!({"base_dir": "alpha"})).await?;
    let states: Vec<&Value> = status["tasks"]
        .as_array()
        .context("tasks")?
        .iter()
        .map(|task| &task["status"])
        .collect();
    assert_eq!(states, [&json!("pending"); 3]);

    let again = server.ok("create_project", json!({"project_name": "alpha"})).await?;
    assert_eq!(again["created"], false);
    let error = server.err("create_project", json!({"project_name": "a/b"})).await?;
    assert!(error.contains("project_name"), "{error}");
    server.stop().await
}

#[tokio::test]
async fn run_task_feeds_the_task_on_stdin_and_saves_its_output() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;

    let run = server
        .ok("run_task", json!({"task_path": "001_set-up-the-repo.md"}))
        .await?;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["exit_code"], 0);
    assert!(run["duration_ms"].is_u64());
    assert_eq!(run["output_head"], "# Task 1: Set up the repo\n\nCreate it.\ndone\n");
    let result = std::fs::read_to_string(server.path("001_set-up-the-repo.result.md"))?;
    assert!(result.contains("Create it.") && result.contains("done"), "{result}");
    let log = std::fs::read_to_string(server.path("001_set-up-the-repo.log"))?;
    assert!(log.contains("exited with code 0"), "{log}");

    let status_file: Value = serde_json::from_str(&std::fs::read_to_string(server.path(".task-status.json"))?)?;
    assert_eq!(status_file["tasks"]["001_set-up-the-repo.md"]["status"], "completed");
    let status = server.task_status("001_set-up-the-repo.md").await?;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["exit_code"], 0);
    assert!(status["duration_ms"].is_u64());
    assert_eq!(status["title"], "Task 1: Set up the repo");
    assert_eq!(server.task_status("002_break-things.md").await?["status"], "pending");
    server.stop().await
}

#[tokio::test]
async fn a_task_that_exits_non_zero_is_failed_with_its_exit_code() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    let executor = "sh -c 'cat >/dev/null; echo broken >&2; exit 3'";
    let server = Server::start(Launch::with_executor(base.path(), executor)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;

    let run = server
        .ok("run_task", json!({"task_path": "001_set-up-the-repo.md"}))
        .await?;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["exit_code"], 3);

    let summary = server.ok("get_task_summary", json!({})).await?;
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["pending"], 2);
    assert_eq!(summary["failures"][0]["task"], "001_set-up-the-repo.md");
    assert_eq!(summary["failures"][0]["exit_code"], 3);
    let tail = summary["failures"][0]["log_tail"].as_str().unwrap_or("");
    assert!(tail.contains("broken") && tail.contains("code 3"), "{tail}");
    server.stop().await
}

#[tokio::test]
async fn a_task_past_its_timeout_is_killed_with_its_process_group() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    // `sh` forks `sleep` (not the last command), so there is a grandchild to kill.
    let executor = "sh -c 'sleep 30; echo never'";
    let server = Server::start(Launch::with_executor(base.path(), executor)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;

    let run = server
        .ok(
            "run_task",
            json!({"task_path": "001_set-up-the-repo.md", "timeout_seconds": 1}),
        )
        .await?;
    assert_eq!(run["status"], "timed_out");
    assert_eq!(run["exit_code"], Value::Null);
    let pgid = i32::try_from(run["pid"].as_i64().context("pid")?)?;
    wait_group_gone(pgid).await?;
    let result = std::fs::read_to_string(server.path("001_set-up-the-repo.result.md"))?;
    assert!(!result.contains("never"), "{result}");

    let summary = server.ok("get_task_summary", json!({})).await?;
    assert_eq!(summary["timed_out"], 1);
    let tail = summary["failures"][0]["log_tail"].as_str().unwrap_or("");
    assert!(tail.contains("timed out after 1s"), "{tail}");
    server.stop().await
}

/// Fails the tasks whose text says FAIL.
const FAIL_ON_MARK: &str = "sh -c 'if grep -q FAIL; then echo bad >&2; exit 3; fi; echo done'";

#[tokio::test]
async fn run_all_tasks_stops_at_the_first_failure_and_resumes() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    let server = Server::start(Launch::with_executor(base.path(), FAIL_ON_MARK)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;

    let first = server.ok("run_all_tasks", json!({})).await?;
    assert_eq!(first["completed"], 1);
    assert_eq!(first["failed"], 1);
    assert_eq!(first["stopped_early"], true);
    assert_eq!(names(&first, "not_run"), ["003_write-docs.md"]);
    assert_eq!(server.task_status("003_write-docs.md").await?["status"], "pending");

    let second = server
        .ok("run_all_tasks", json!({"resume": true, "continue_on_error": true}))
        .await?;
    assert_eq!(names(&second, "skipped"), ["001_set-up-the-repo.md"]);
    assert_eq!(names(&second, "results"), ["002_break-things.md", "003_write-docs.md"]);
    assert_eq!(second["results"][0]["status"], "failed");
    assert_eq!(second["results"][1]["status"], "completed");
    assert_eq!(second["stopped_early"], false);

    let summary = server.ok("get_task_summary", json!({})).await?;
    assert_eq!(summary["completed"], 2);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["total"], 3);
    let tail = summary["failures"][0]["log_tail"].as_str().unwrap_or("");
    assert!(tail.contains("bad"), "{tail}");
    server.stop().await
}

#[tokio::test]
async fn run_all_tasks_sends_progress_for_the_request_token() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;

    // rmcp's client puts a progress token in every request's `_meta`.
    let run = server.ok("run_all_tasks", json!({})).await?;
    assert_eq!(run["completed"], 3);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let progress = loop {
        let progress = server.progress.lock().map(|p| p.clone()).unwrap_or_default();
        if progress.len() >= 4 || tokio::time::Instant::now() >= deadline {
            break progress;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(progress.len(), 4, "{progress:?}");
    let token = &progress[0].progress_token;
    assert!(progress.iter().all(|p| &p.progress_token == token));
    assert!(progress.iter().all(|p| p.total == Some(3.0)));
    let steps: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    assert_eq!(steps, [0.0, 1.0, 2.0, 3.0]);
    let first = progress[0].message.clone().unwrap_or_default();
    assert!(first.contains("001_set-up-the-repo.md"), "{first}");
    server.stop().await
}

/// Sleeps on tasks whose text says SLOW.
const SLOW_ON_MARK: &str = "sh -c 'if grep -q SLOW; then sleep 30; fi; echo done'";
const SLOW_TASKS: &str = "## Task 1: Quick\nquick\n\n## Task 2: Slow\nSLOW\n";

#[tokio::test]
async fn a_second_run_of_a_running_task_is_refused() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), SLOW_TASKS)?;
    let server = Server::start(Launch::with_executor(base.path(), SLOW_ON_MARK)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;

    let first = server.call_in_background("run_task", json!({"task_path": "002_slow.md"}));
    let pgid = server.wait_running("002_slow.md").await?;

    let error = server.err("run_task", json!({"task_path": "002_slow.md"})).await?;
    assert!(error.contains("already running"), "{error}");
    // Other tasks are not blocked.
    let quick = server.ok("run_task", json!({"task_path": "001_quick.md"})).await?;
    assert_eq!(quick["status"], "completed");

    let cleaned = server.ok("clean", json!({})).await?;
    assert_eq!(names(&cleaned, "killed"), ["002_slow.md"]);
    let first = tokio::time::timeout(PATIENCE, first).await???;
    let first = first.structured_content.context("first run result")?;
    assert_eq!(first["status"], "failed", "{first}");
    assert_eq!(first["error"], "cancelled by clean", "{first}");
    wait_group_gone(pgid).await?;
    server.stop().await
}

#[tokio::test]
async fn clean_kills_running_tasks_and_removes_only_generated_files() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), SLOW_TASKS)?;
    write(&base.path().join("notes.log"), "keep me")?;
    write(&base.path().join("sub/001_other.log"), "not this folder")?;
    let server = Server::start(Launch::with_executor(base.path(), SLOW_ON_MARK)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    server.ok("run_task", json!({"task_path": "001_quick.md"})).await?;

    let slow = server.call_in_background("run_all_tasks", json!({"resume": true}));
    let pgid = server.wait_running("002_slow.md").await?;

    let cleaned = server.ok("clean", json!({})).await?;
    assert_eq!(names(&cleaned, "killed"), ["002_slow.md"]);
    assert_eq!(
        names(&cleaned, "removed"),
        [
            ".task-status.json",
            "001_quick.log",
            "001_quick.result.md",
            "002_slow.log",
            "002_slow.result.md",
        ]
    );
    wait_group_gone(pgid).await?;
    let run_all = tokio::time::timeout(PATIENCE, slow).await???;
    let run_all = run_all.structured_content.context("run_all result")?;
    assert_eq!(run_all["stopped_early"], true);

    let mut left: Vec<String> = std::fs::read_dir(base.path())?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    left.sort();
    assert_eq!(left, ["001_quick.md", "002_slow.md", "notes.log", "sub", "tasks.md"]);
    assert!(base.path().join("sub/001_other.log").is_file());
    assert_eq!(server.task_status("002_slow.md").await?["status"], "pending");
    server.stop().await
}

#[tokio::test]
async fn paths_that_escape_the_base_dir_are_refused() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    let outside = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    write(&outside.path().join("tasks.md"), THREE_TASKS)?;
    write(&outside.path().join("001_evil.md"), "# evil\n")?;
    std::os::unix::fs::symlink(outside.path(), base.path().join("escape"))?;
    std::os::unix::fs::symlink(outside.path().join("001_evil.md"), base.path().join("001_evil.md"))?;
    let outside_abs = outside.path().join("tasks.md").display().to_string();
    let outside_dir = outside.path().display().to_string();
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;

    let cases = [
        // `..`, even when it would come back inside.
        ("run_task", json!({"task_path": "../x/001_a.md"}), "`..` is not allowed"),
        (
            "parse_task_list",
            json!({"task_list_path": "sub/../tasks.md"}),
            "`..` is not allowed",
        ),
        ("get_task_status", json!({"base_dir": ".."}), "`..` is not allowed"),
        (
            "create_project",
            json!({"project_name": "p", "base_dir": "../"}),
            "`..` is not allowed",
        ),
        // Absolute paths elsewhere.
        (
            "parse_task_list",
            json!({"task_list_path": outside_abs}),
            "outside the base dir",
        ),
        ("run_task", json!({"task_path": "/etc/passwd"}), "outside the base dir"),
        ("clean", json!({"base_dir": outside_dir}), "outside the base dir"),
        // Symlinks that escape.
        (
            "parse_task_list",
            json!({"task_list_path": "escape/tasks.md"}),
            "outside the base dir",
        ),
        ("get_task_status", json!({"base_dir": "escape"}), "outside the base dir"),
        ("clean", json!({"base_dir": "escape"}), "outside the base dir"),
        ("run_task", json!({"task_path": "001_evil.md"}), "outside the base dir"),
        (
            "create_project",
            json!({"project_name": "escape"}),
            "outside the base dir",
        ),
        (
            "create_project",
            json!({"project_name": "new", "base_dir": "escape"}),
            "outside the base dir",
        ),
    ];
    for (tool, args, expected) in cases {
        let error = server.err(tool, args.clone()).await?;
        assert!(error.contains(expected), "{tool} {args}: {error}");
    }

    // An absolute path inside the base dir is fine.
    let inside = base.path().join("tasks.md").display().to_string();
    server.ok("parse_task_list", json!({"task_list_path": inside})).await?;
    // Nothing was written outside.
    let mut outside_files: Vec<String> = std::fs::read_dir(outside.path())?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    outside_files.sort();
    assert_eq!(outside_files, ["001_evil.md", "tasks.md"]);
    server.stop().await
}

#[tokio::test]
async fn invalid_arguments_are_tool_errors_and_the_server_keeps_answering() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    write(&base.path().join("empty.md"), "# Nothing to do\n\njust prose\n")?;
    let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;

    let cases = [
        ("run_task", json!({}), "missing field `task_path`"),
        ("run_task", json!({"task_path": 5}), "invalid type"),
        (
            "run_task",
            json!({"task_path": "001_set-up-the-repo.md", "timeout_seconds": 0}),
            "timeout_seconds must be between 1 and 86400",
        ),
        (
            "run_task",
            json!({"task_path": "001_set-up-the-repo.md", "timeout_seconds": -1}),
            "invalid value",
        ),
        (
            "run_task",
            json!({"task_path": "001_set-up-the-repo.md", "executor": "rm -rf /"}),
            "unknown field `executor`",
        ),
        ("run_task", json!({"task_path": "tasks.md"}), "is not a task file"),
        ("run_task", json!({"task_path": "009_missing.md"}), "does not exist"),
        ("run_task", json!({"task_path": ""}), "the path is empty"),
        ("run_all_tasks", json!({"resume": "yes"}), "invalid type"),
        (
            "parse_task_list",
            json!({"task_list_path": "empty.md"}),
            "no tasks found",
        ),
        ("get_task_status", json!({"base_dir": "nope"}), "does not exist"),
        ("get_task_status", json!({"base_dir": "tasks.md"}), "is not a directory"),
        ("create_project", json!({"project_name": ".."}), "project_name"),
    ];
    for (tool, args, expected) in cases {
        let error = server.err(tool, args.clone()).await?;
        assert!(error.contains(expected), "{tool} {args}: {error}");
    }
    // An unknown tool is a protocol error, not a crash.
    let unknown = server.call("no_such_tool", json!({})).await;
    assert!(unknown.is_err() || unknown.is_ok_and(|r| r.is_error == Some(true)));

    // Still answering.
    assert_eq!(server.client.list_all_tools().await?.len(), 7);
    let run = server
        .ok("run_task", json!({"task_path": "001_set-up-the-repo.md"}))
        .await?;
    assert_eq!(run["status"], "completed");
    server.stop().await
}

#[tokio::test]
async fn the_executor_comes_from_the_flag_then_the_environment() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), "- [ ] only task\n")?;

    let from_env = Server::start(Launch {
        base: base.path(),
        executor_flag: None,
        executor_env: Some("sh -c 'echo from-env'"),
        orphaned: false,
    })
    .await?;
    from_env
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    let run = from_env
        .ok("run_task", json!({"task_path": "001_only-task.md"}))
        .await?;
    assert_eq!(run["output_head"], "from-env\n");
    from_env.stop().await?;

    let flag_wins = Server::start(Launch {
        base: base.path(),
        executor_flag: Some("sh -c 'echo from-flag'"),
        executor_env: Some("sh -c 'echo from-env'"),
        orphaned: false,
    })
    .await?;
    let run = flag_wins
        .ok("run_task", json!({"task_path": "001_only-task.md"}))
        .await?;
    assert_eq!(run["output_head"], "from-flag\n");
    flag_wins.stop().await
}

#[tokio::test]
async fn a_missing_executor_is_a_failed_run_with_a_clear_error() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), "- [ ] only task\n")?;
    let executor = "/nonexistent/executor --flag";
    let server = Server::start(Launch::with_executor(base.path(), executor)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    let run = server.ok("run_task", json!({"task_path": "001_only-task.md"})).await?;
    assert_eq!(run["status"], "failed");
    let error = run["error"].as_str().unwrap_or("");
    assert!(
        error.contains("failed to start executor `/nonexistent/executor`"),
        "{error}"
    );
    server.stop().await
}

type Call = tokio::task::JoinHandle<Result<CallToolResult, rmcp::ServiceError>>;

/// A server whose one task runs `executor` for a long time: the server, the
/// `run_task` call in flight and the task's process group.
async fn server_with_a_long_task(base: &Path, executor: &str) -> anyhow::Result<(Server, Call, i32)> {
    write(&base.join("tasks.md"), "- [ ] long task\n")?;
    let server = Server::start(Launch::with_executor(base, executor)).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    let running = server.call_in_background("run_task", json!({"task_path": "001_long-task.md"}));
    let pgid = server.wait_running("001_long-task.md").await?;
    Ok((server, running, pgid))
}

/// A client that cancels its `run_task` or `run_all_tasks` (`notifications/cancelled`)
/// stops the task: its process group is killed at once (long before its executor's
/// 600 s, or the test's patience), and the task shows as failed, interrupted.
#[tokio::test]
async fn a_cancelled_request_stops_its_task() -> anyhow::Result<()> {
    use rmcp::model::{CallToolRequest, ClientRequest};
    use rmcp::service::PeerRequestOptions;
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), "- [ ] long task\n")?;
    let server = Server::start(Launch::with_executor(base.path(), "sh -c 'sleep 600; echo never'")).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    for (tool, args) in [
        ("run_task", json!({"task_path": "001_long-task.md"})),
        ("run_all_tasks", json!({})),
    ] {
        let params = CallToolRequestParams::new(tool).with_arguments(args.as_object().cloned().unwrap_or_default());
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = server
            .client
            .peer()
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await?;
        let pgid = server.wait_running("001_long-task.md").await?;
        handle.cancel(Some("changed my mind".into())).await?;
        wait_group_gone(pgid).await?;
        let status = server.task_status("001_long-task.md").await?;
        ensure!(
            status["status"] == "failed" && status["interrupted"] == true,
            "{tool}: {status}"
        );
    }
    server.stop().await
}

#[tokio::test]
async fn a_task_left_running_by_a_killed_server_shows_as_interrupted() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    // `sleep` itself is the executor: PR_SET_PDEATHSIG reaches it directly.
    let (mut first, running, pgid) = server_with_a_long_task(base.path(), "sleep 30").await?;

    // SIGKILL: the server gets no chance to clean up.
    first.child.start_kill()?;
    first.child.wait().await?;
    wait_group_gone(pgid).await?;
    let _ = tokio::time::timeout(PATIENCE, running).await?;

    let second = Server::start(Launch::with_executor(base.path(), ECHO)).await?;
    let status = second.task_status("001_long-task.md").await?;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["interrupted"], true);
    // resume runs it again.
    let run = second.ok("run_all_tasks", json!({"resume": true})).await?;
    assert_eq!(run["completed"], 1);
    second.stop().await
}

#[tokio::test]
async fn a_base_dir_that_does_not_exist_is_a_startup_error() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    let output = tokio::process::Command::new(BIN)
        .args(["task-runner", "--base-dir"])
        .arg(base.path().join("missing"))
        .stdin(Stdio::null())
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("base dir") && stderr.contains("missing"), "{stderr}");

    let output = tokio::process::Command::new(BIN)
        .args(["task-runner", "--executor", "sh -c 'unclosed"])
        .stdin(Stdio::null())
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unclosed `'` quote"), "{stderr}");
    Ok(())
}

/// The official MCP Inspector CLI, a client nobody here wrote. `MCP_INSPECTOR_CLI` is a
/// whitespace-separated command prefix that ends in `--cli` (`.ci/install-inspector.sh`
/// prints it). Without it the test says why it skips.
#[tokio::test]
async fn the_mcp_inspector_cli_lists_and_calls_tools() -> anyhow::Result<()> {
    let Some(prefix) = std::env::var("MCP_INSPECTOR_CLI")
        .ok()
        .filter(|prefix| !prefix.trim().is_empty())
    else {
        eprintln!(
            "skipping the_mcp_inspector_cli_lists_and_calls_tools: MCP_INSPECTOR_CLI is not set (run .ci/install-inspector.sh and export what it prints)"
        );
        return Ok(());
    };
    let prefix: Vec<&str> = prefix.split_whitespace().collect();
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), THREE_TASKS)?;
    let catalog = base.path().join("inspector-catalog.json");

    let inspector = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(prefix[0]);
        command
            .args(&prefix[1..])
            .arg(BIN)
            .args(["task-runner", "--base-dir"])
            .arg(base.path())
            .args(["--executor", ECHO])
            .args(extra)
            .env("MCP_CATALOG_PATH", &catalog)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    };
    let mut probe = inspector(&["--method", "tools/list"]);
    let listed = match tokio::time::timeout(Duration::from_secs(120), probe.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            eprintln!(
                "skipping the_mcp_inspector_cli_lists_and_calls_tools: MCP_INSPECTOR_CLI `{}` is not runnable: {err}",
                prefix.join(" ")
            );
            return Ok(());
        }
        Err(_) => bail!("the inspector did not answer tools/list within 120 s"),
    };
    let stdout = String::from_utf8_lossy(&listed.stdout);
    ensure!(
        listed.status.success(),
        "inspector tools/list failed ({}): {stdout}\n{}",
        listed.status,
        String::from_utf8_lossy(&listed.stderr)
    );
    let tools: Value = serde_json::from_str(&stdout).context("tools/list output")?;
    let mut names: Vec<&str> = tools["tools"]
        .as_array()
        .context("tools")?
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(names.contains(&"run_all_tasks"));

    for (tool, args) in [
        ("parse_task_list", vec!["task_list_path=tasks.md"]),
        ("run_task", vec!["task_path=001_set-up-the-repo.md"]),
        ("get_task_summary", vec![]),
    ] {
        let mut extra = vec!["--method", "tools/call", "--tool-name", tool];
        if !args.is_empty() {
            extra.push("--tool-arg");
            extra.extend(args);
        }
        let output = tokio::time::timeout(Duration::from_secs(120), inspector(&extra).output())
            .await
            .with_context(|| format!("inspector {tool} timed out"))??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "inspector {tool} failed ({}): {stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let result: Value = serde_json::from_str(&stdout).context("tools/call output")?;
        assert_eq!(result["isError"], false, "{tool}: {result}");
        if tool == "run_task" {
            assert_eq!(result["structuredContent"]["status"], "completed", "{result}");
        }
    }
    assert!(base.path().join("001_set-up-the-repo.result.md").is_file());

    // A refused path reaches the Inspector as a tool error, too.
    let refused = inspector(&[
        "--method",
        "tools/call",
        "--tool-name",
        "run_task",
        "--tool-arg",
        "task_path=../../etc/passwd",
    ])
    .output()
    .await?;
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(stdout.contains("\"isError\": true"), "{stdout}");
    assert!(stdout.contains("is not allowed"), "{stdout}");
    Ok(())
}

/// The two example projects, run as the example config runs them: one server per
/// folder (on copies, so the repository stays clean).
#[tokio::test]
async fn the_example_projects_parse_and_run() -> anyhow::Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/task-runner");
    for (project, expected) in [
        (
            "alpha",
            vec![
                "001_write-the-greeting.md",
                "002_review-the-greeting.md",
                "003_announce-the-release.md",
            ],
        ),
        (
            "beta",
            vec![
                "001_fix-the-broken-links-in-the-install-guide.md",
                "002_add-an-example-for-the-base-dir-flag.md",
                "003_spell-check-the-faq.md",
            ],
        ),
    ] {
        let base = tempfile::tempdir()?;
        std::fs::copy(examples.join(project).join("tasks.md"), base.path().join("tasks.md"))?;
        let server = Server::start(Launch::with_executor(base.path(), ECHO)).await?;
        let parsed = server
            .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
            .await?;
        assert_eq!(names(&parsed, "tasks"), expected, "{project}");
        let run = server.ok("run_all_tasks", json!({})).await?;
        assert_eq!(run["completed"], 3, "{project}: {run}");
        server.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn closing_the_session_kills_running_tasks_and_ends_the_server() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    let (mut server, running, pgid) = server_with_a_long_task(base.path(), "sh -c 'sleep 30; echo never'").await?;

    // Closing the client closes the server's stdin: the MCP session is over.
    server.client.cancel().await?;
    let exit = tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .context("the server did not exit after its stdin closed")??;
    assert!(exit.success(), "{exit}");
    wait_group_gone(pgid).await?;
    let _ = tokio::time::timeout(PATIENCE, running).await?;
    Ok(())
}

/// Issue 11, defect 14: executors run in process groups of their own, so the
/// SIGTERM a supervisor sends to the server's group missed them; the server
/// died at once and the executor's children lived on under init. SIGTERM now
/// kills every running task's group before the server exits.
#[tokio::test]
async fn sigterm_kills_running_tasks_before_the_server_exits() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    let (mut server, running, pgid) = server_with_a_long_task(base.path(), "sh -c 'sleep 30; echo never'").await?;

    let pid = server.child.id().context("the server's pid")?;
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let exit = tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .context("the server did not exit on SIGTERM")??;
    assert!(exit.success(), "{exit}");
    wait_group_gone(pgid).await?;
    let _ = tokio::time::timeout(PATIENCE, running).await;
    Ok(())
}

/// Issue 11, defect 14: a kill -9 of mcp-manager took the task runner with it
/// (its death signal was SIGKILL), and the executor's children lived on under
/// init. Started by a parent that asked for a death signal, the task runner
/// turns it into SIGTERM and kills its tasks before it goes.
#[tokio::test]
async fn the_death_of_its_parent_kills_running_tasks() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    write(&base.path().join("tasks.md"), "- [ ] long task\n")?;
    let mut launch = Launch::with_executor(base.path(), "sh -c 'sleep 30; echo never'");
    launch.orphaned = true;
    let mut server = Server::start(launch).await?;
    server
        .ok("parse_task_list", json!({"task_list_path": "tasks.md"}))
        .await?;
    let running = server.call_in_background("run_task", json!({"task_path": "001_long-task.md"}));
    let pgid = server.wait_running("001_long-task.md").await?;

    drop(server.parent.take());
    let exit = tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .context("the server did not exit when its parent died")??;
    assert!(exit.success(), "{exit}");
    wait_group_gone(pgid).await?;
    let _ = tokio::time::timeout(PATIENCE, running).await;
    Ok(())
}
