//! The MCP face of the task runner: one rmcp tool per [`Runner`] operation.
//!
//! Arguments arrive as a raw JSON object and are deserialized here, so that a bad
//! argument becomes a tool error (`isError: true`) with a clear message instead of
//! a JSON-RPC protocol error; the advertised input schemas are still generated from
//! the argument types.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::handler::server::wrapper::Json;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, JsonObject, ProgressNotificationParam, RequestMetaObject,
};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::TaskRunnerError;
use super::runner::{
    CleanOutput, CreateProjectArgs, CreateProjectOutput, ParseTaskListArgs, ParseTaskListOutput, Progress, ProjectArgs,
    RunAllTasksArgs, RunAllTasksOutput, RunTaskArgs, RunTaskOutput, Runner, TaskStatusOutput, TaskSummaryOutput,
};

/// The name the server reports in `initialize`.
pub const SERVER_NAME: &str = "mcp-manager-task-runner";

/// The task-runner MCP server.
#[derive(Clone)]
pub struct TaskRunnerServer {
    runner: Arc<Runner>,
    tool_router: ToolRouter<Self>,
}

impl TaskRunnerServer {
    pub fn new(runner: Arc<Runner>) -> Self {
        Self {
            runner,
            tool_router: Self::tool_router(),
        }
    }
}

/// The input schema of a tool, generated from its argument type.
fn input_schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    // Our argument types are structs, so the schema root is always an object and
    // this cannot fail; the fallback only keeps a future mistake from panicking.
    let schema = rmcp::handler::server::common::schema_for_input::<T>()
        .unwrap_or_else(|_| rmcp::handler::server::common::schema_for_empty_input());
    let mut schema = portable(&schema);
    // Optional arguments are just "not required": advertise `"type": "string"`
    // rather than `["string", "null"]` (with `"default": null`), which single-type
    // schema dialects (some model providers) reject. `null` is still accepted.
    if let Some(serde_json::Value::Object(properties)) = Arc::make_mut(&mut schema).get_mut("properties") {
        for property in properties.values_mut() {
            let Some(property) = property.as_object_mut() else {
                continue;
            };
            let single = match property.get("type") {
                Some(serde_json::Value::Array(types)) if types.len() == 2 => types
                    .iter()
                    .find(|t| t.as_str() != Some("null"))
                    .filter(|_| types.iter().any(|t| t.as_str() == Some("null")))
                    .cloned(),
                _ => None,
            };
            if let Some(single) = single {
                property.insert("type".into(), single);
                if property.get("default") == Some(&serde_json::Value::Null) {
                    property.remove("default");
                }
            }
        }
    }
    schema
}

/// The output schema of a tool, generated from its result type.
fn output_schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    portable(&rmcp::handler::server::tool::schema_for_output::<T>())
}

/// Drops the integer `format`s schemars adds (`uint`, `uint64`, ...): they are not
/// JSON Schema formats, and validators such as the MCP Inspector's warn about each.
/// The `minimum: 0` of unsigned types stays.
fn portable(schema: &JsonObject) -> Arc<JsonObject> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(object) => {
                let numeric_format = object.get("format").and_then(|f| f.as_str()).is_some_and(|format| {
                    matches!(
                        format,
                        "uint"
                            | "uint8"
                            | "uint16"
                            | "uint32"
                            | "uint64"
                            | "int"
                            | "int8"
                            | "int16"
                            | "int32"
                            | "int64"
                            | "float"
                            | "double"
                    )
                });
                if numeric_format {
                    object.remove("format");
                }
                object.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::Value::Object(schema.clone());
    strip(&mut value);
    match value {
        serde_json::Value::Object(object) => Arc::new(object),
        _ => Arc::new(schema.clone()),
    }
}

fn parse_args<T: DeserializeOwned>(args: JsonObject) -> Result<T, TaskRunnerError> {
    serde_json::from_value(serde_json::Value::Object(args))
        .map_err(|err| TaskRunnerError::InvalidArguments(err.to_string()))
}

impl IntoCallToolResult for TaskRunnerError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::error(vec![ContentBlock::text(self.client_message())]).into())
    }
}

#[tool_router]
impl TaskRunnerServer {
    #[tool(
        description = "Create a project folder (inside base_dir, default the server's base dir). With task_list_path, parse that Markdown task list into task files in the new folder.",
        input_schema = input_schema::<CreateProjectArgs>(),
        output_schema = output_schema::<CreateProjectOutput>()
    )]
    async fn create_project(&self, args: JsonObject) -> Result<Json<CreateProjectOutput>, TaskRunnerError> {
        let args = parse_args(args)?;
        self.runner.create_project(args).await.map(Json)
    }

    #[tool(
        description = "Parse a Markdown task list ('## Task N: Title' sections, or '- [ ] item' lines) into one task file per task (001_slug.md, ...) in base_dir. Returns the tasks created.",
        input_schema = input_schema::<ParseTaskListArgs>(),
        output_schema = output_schema::<ParseTaskListOutput>()
    )]
    async fn parse_task_list(&self, args: JsonObject) -> Result<Json<ParseTaskListOutput>, TaskRunnerError> {
        let args = parse_args(args)?;
        self.runner.parse_task_list(args).await.map(Json)
    }

    #[tool(
        description = "Run one task: the server's executor command gets the task text on stdin and runs in the project folder, killed after timeout_seconds. Output goes to NNN_slug.result.md (stdout) and NNN_slug.log (stderr). Returns status, exit code, duration and the start of the output. A task that is already running is refused.",
        input_schema = input_schema::<RunTaskArgs>(),
        output_schema = output_schema::<RunTaskOutput>()
    )]
    async fn run_task(&self, args: JsonObject, ct: CancellationToken) -> Result<Json<RunTaskOutput>, TaskRunnerError> {
        let args = parse_args(args)?;
        until_cancelled(ct, self.runner.run_task(args)).await.map(Json)
    }

    #[tool(
        description = "Run every task of the project folder in order. resume skips completed tasks; the run stops at the first failure unless continue_on_error. Sends progress notifications when the request has a progress token.",
        input_schema = input_schema::<RunAllTasksArgs>(),
        output_schema = output_schema::<RunAllTasksOutput>()
    )]
    async fn run_all_tasks(
        &self,
        args: JsonObject,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> Result<Json<RunAllTasksOutput>, TaskRunnerError> {
        let args: RunAllTasksArgs = parse_args(args)?;
        let Some(token) = meta.get_progress_token() else {
            return until_cancelled(ct, self.runner.run_all_tasks(args, None))
                .await
                .map(Json);
        };
        let (sender, mut receiver) = mpsc::unbounded_channel::<Progress>();
        // The forwarder runs in this task (not spawned), so every notification is
        // sent before the response. It ends when run_all_tasks drops the sender.
        let forward = async move {
            while let Some(step) = receiver.recv().await {
                let param = ProgressNotificationParam::new(token.clone(), step.done as f64)
                    .with_total(step.total as f64)
                    .with_message(step.message);
                // A client that went away is not the run's problem.
                let _ = peer.notify_progress(param).await;
            }
        };
        let run = async { tokio::join!(self.runner.run_all_tasks(args, Some(sender)), forward).0 };
        until_cancelled(ct, run).await.map(Json)
    }

    #[tool(
        description = "Every task of the project folder with its status (pending, running, completed, failed, timed_out), exit code and duration.",
        input_schema = input_schema::<ProjectArgs>(),
        output_schema = output_schema::<TaskStatusOutput>()
    )]
    async fn get_task_status(&self, args: JsonObject) -> Result<Json<TaskStatusOutput>, TaskRunnerError> {
        let args = parse_args(args)?;
        self.runner.task_status(args).await.map(Json)
    }

    #[tool(
        description = "Counts per status, total run time, and the failed tasks with the tail of their logs.",
        input_schema = input_schema::<ProjectArgs>(),
        output_schema = output_schema::<TaskSummaryOutput>()
    )]
    async fn get_task_summary(&self, args: JsonObject) -> Result<Json<TaskSummaryOutput>, TaskRunnerError> {
        let args = parse_args(args)?;
        self.runner.task_summary(args).await.map(Json)
    }

    #[tool(
        description = "Kill the tasks this server is running in the project folder and remove the status, result and log files. Task files and anything else are kept.",
        input_schema = input_schema::<ProjectArgs>(),
        output_schema = output_schema::<CleanOutput>()
    )]
    async fn clean(&self, args: JsonObject) -> Result<Json<CleanOutput>, TaskRunnerError> {
        let args = parse_args(args)?;
        self.runner.clean(args).await.map(Json)
    }
}

/// `work`, unless the client cancels its request first (`notifications/cancelled`):
/// then `work` is dropped, which kills the process group of a task it was running
/// (`ActiveGuard`), and the request ends with an error nobody reads.
async fn until_cancelled<T>(
    ct: CancellationToken,
    work: impl std::future::Future<Output = Result<T, TaskRunnerError>>,
) -> Result<T, TaskRunnerError> {
    tokio::select! {
        result = work => result,
        () = ct.cancelled() => Err(TaskRunnerError::Cancelled),
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "mcp-manager-task-runner",
    instructions = "Turns a Markdown task list into task files and runs each with a fixed executor command. Typical flow: parse_task_list, run_all_tasks (resume: true to continue), get_task_summary. Paths are relative to the server's base dir."
)]
impl ServerHandler for TaskRunnerServer {}
