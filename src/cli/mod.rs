//! Command-line interface: clap definitions and one module per command group.
//!
//! The clap structs stay dumb; each command resolves its settings and calls into the
//! library. `main` maps errors to exit codes and prints the error chain once.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod task_runner;

/// Declarative manager for Model Context Protocol servers.
#[derive(Debug, Parser)]
#[command(name = "mcp-manager", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the built-in task-runner MCP server over stdio.
    TaskRunner(task_runner::TaskRunnerArgs),
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::TaskRunner(args) => task_runner::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
