//! Command-line interface: clap definitions and one module per command group.
//!
//! The clap structs stay dumb; each command resolves its settings and calls into the
//! library. `main` maps errors to exit codes and prints the error chain once.
//!
//! Exit codes: 0 success, 1 error (including invalid config), 2 changes pending
//! (`plan --detailed-exitcode`), 3 stale saved plan.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod bridge;
mod call;
mod client;
mod clients;
mod config_cmds;
mod gateway;
mod init;
mod kube;
mod live;
mod logging;
mod login;
mod output;
mod plan;
mod render;
mod service;
mod task_runner;

/// Declarative manager for Model Context Protocol servers.
#[derive(Debug, Parser)]
#[command(name = "mcp-manager", version, about, long_about = None)]
pub struct Cli {
    /// Where observed state is kept [default: $XDG_STATE_HOME/mcp-manager or ~/.local/state/mcp-manager]
    #[arg(long, global = true, env = "MCP_MANAGER_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: start the configured servers and keep them as configured.
    Start(service::StartArgs),
    /// Stop the service and every server it runs.
    Stop,
    /// Restart the service (in the background) with the arguments it was started with.
    Restart,
    /// Show every server's phase, health and sync status.
    Status(service::StatusArgs),
    /// Show health checks.
    Health(service::HealthArgs),
    /// Start (or resume) a server.
    StartServer(service::ServerArgs),
    /// Stop a server; it stays down until `start-server`.
    StopServer(service::ServerArgs),
    /// Restart a server (also one that gave up after too many failures).
    RestartServer(service::ServerArgs),
    /// Apply the current plan, or a saved one (refused if stale).
    Apply(service::ApplyArgs),
    /// Print a server's captured stderr.
    Logs(service::LogsArgs),
    /// List every server found in the config sources, with where it was found.
    Discover(config_cmds::DiscoverArgs),
    /// Check the config against the schemas and semantic rules; report every problem.
    Validate(config_cmds::ValidateArgs),
    /// List the running service's servers, or with --config the configured ones (secrets redacted).
    ListServers(config_cmds::ListServersArgs),
    /// Show what would start, stop, restart or update, and why.
    Plan(plan::PlanArgs),
    /// Run the built-in task-runner MCP server over stdio.
    TaskRunner(task_runner::TaskRunnerArgs),
    /// Be a stdio MCP server that relays to the running service's gateway (for
    /// Claude Desktop, Cursor, ...: {"command": "mcp-manager", "args": ["connect"]}).
    Connect,
    /// Call a tool (or list the tools) of a server: through the running
    /// gateway (`call SERVER [TOOL [JSON_ARGS]]`) or directly (`--url URL`).
    /// Exit 1 when the tool reports an error.
    Call(call::CallArgs),
    /// Log in to a remote server that wants OAuth; the service uses (and
    /// refreshes) the tokens, kept in the state dir.
    Login(login::LoginArgs),
    /// Forget the OAuth tokens of a server.
    Logout(login::LogoutArgs),
    /// Serve a stdio MCP server as streamable HTTP at /mcp (for pods, or any
    /// client that speaks HTTP): `bridge --listen 0.0.0.0:8080 -- npx -y server`.
    Bridge(bridge::BridgeArgs),
    /// Print the Kubernetes manifests of the config (`render kubernetes`).
    Render(render::RenderArgs),
    /// List every tool, resource and prompt the gateway exposes, with pin status.
    Capabilities(gateway::CapabilitiesArgs),
    /// Accept the changed definitions of a server's tools (tool pinning).
    Approve(gateway::ApproveArgs),
    /// Print a shell completion script: `mcp-manager completions bash > /etc/bash_completion.d/mcp-manager`.
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `mcp-manager man | man -l -`.
    Man,
    /// Print the web dashboard's URL (with the token, in the fragment).
    Dashboard,
    /// Set up desktop MCP clients (Claude Desktop, Claude Code, Cursor, VS Code,
    /// Windsurf) to use the gateway: `client add claude-desktop`.
    Client(clients::ClientArgs),
}

/// Where to look for config: `--config PATH`, repeatable, file or folder.
#[derive(Debug, Clone, Args)]
pub struct ConfigPaths {
    /// Config file or folder to scan (repeatable) [default: ./]
    #[arg(long = "config", short = 'c', value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

impl ConfigPaths {
    pub fn resolve(&self) -> Vec<PathBuf> {
        if self.paths.is_empty() {
            vec![PathBuf::from(".")]
        } else {
            self.paths.clone()
        }
    }
}

/// Settings shared by every command, resolved from flags and the environment.
pub struct Globals {
    pub state_dir: PathBuf,
    pub cwd: Option<PathBuf>,
}

impl Globals {
    /// Whether stdout gets colour: a terminal, and NO_COLOR unset.
    pub fn color_stdout(&self) -> bool {
        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    }

    pub fn relative_to(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    // PID 1 in a container: be its init first (reap orphans, pass signals on).
    if let Some(code) = init::run_as_init_if_pid_1() {
        return code;
    }
    let cli = Cli::parse();
    // One TLS provider for every HTTP client, ours and rmcp's (reqwest
    // panics building one without it). Installing twice is a harmless error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let globals = Globals {
        state_dir: cli.state_dir.clone().unwrap_or_else(crate::state::default_state_dir),
        cwd: std::env::current_dir().ok(),
    };
    let result = match cli.command {
        Command::Start(args) => service::start(&globals, args),
        Command::Stop => service::stop(&globals),
        Command::Restart => service::restart(&globals),
        Command::Status(args) => service::status(&globals, args),
        Command::Health(args) => service::health(&globals, args),
        Command::StartServer(args) => service::server_action(&globals, "start", args),
        Command::StopServer(args) => service::server_action(&globals, "stop", args),
        Command::RestartServer(args) => service::server_action(&globals, "restart", args),
        Command::Apply(args) => service::apply(&globals, args),
        Command::Logs(args) => service::logs(&globals, args),
        Command::Discover(args) => config_cmds::discover(&globals, args),
        Command::Validate(args) => config_cmds::validate(&globals, args),
        Command::ListServers(args) => config_cmds::list_servers(&globals, args),
        Command::Plan(args) => plan::run(&globals, args),
        Command::TaskRunner(args) => task_runner::run(args),
        Command::Connect => gateway::connect(&globals),
        Command::Call(args) => call::run(&globals, args),
        Command::Render(args) => render::run(&globals, args),
        Command::Bridge(args) => bridge::run(&globals, args),
        Command::Login(args) => login::login(&globals, args),
        Command::Logout(args) => login::logout(&globals, args),
        Command::Capabilities(args) => gateway::capabilities(&globals, args),
        Command::Approve(args) => gateway::approve(&globals, args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "mcp-manager", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard => gateway::dashboard(&globals),
        Command::Client(args) => clients::run(&globals, args),
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
