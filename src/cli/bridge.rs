//! `mcp-manager bridge -- COMMAND [ARGS...]`: serves one stdio MCP server as
//! streamable HTTP at `/mcp` (and `/healthz`), for pods and for anyone who
//! needs a stdio server on the network. It is the service with one server:
//! the same supervision (restart with backoff, `max_restart_attempts`), the
//! same gateway (every MCP feature relayed, names as the server wrote them),
//! `session: shared` or `per_client`; `/mcp` (and `/metrics`) need no token
//! (requests from web pages of other machines, by their `Origin`, are
//! refused), and the
//! bridge exits non-zero once the server has failed for good, so that
//! whoever runs the bridge (Kubernetes, systemd) sees it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::json;

use super::Globals;
use crate::reconciler;
use crate::service;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Session {
    /// One child for every client
    Shared,
    /// A child per MCP session, ended when the session ends
    #[value(name = "per_client")]
    PerClient,
}

#[derive(Debug, clap::Args)]
pub struct BridgeArgs {
    /// Where to serve, HOST:PORT (0.0.0.0:PORT for every address, as in a pod:
    /// whoever reaches it may use the server)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    listen: String,
    /// How clients share the server
    #[arg(long, value_enum, default_value = "shared")]
    session: Session,
    /// Threads serving requests [default: MCP_MANAGER_WORKER_THREADS, else
    /// 1]. One keeps each call on one core, without waking another thread:
    /// the lowest latency, and more calls a second than one stdio server
    /// takes; more for many `per_client` servers
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// The server's name in logs and errors [default: the command's file name]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The stdio MCP server to run: `-- COMMAND [ARGS...]`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// A server name from the command: its file name, made a valid name.
fn name_for(command: &str) -> String {
    let base = Path::new(command)
        .file_name()
        .map_or_else(|| command.to_string(), |n| n.to_string_lossy().into_owned());
    crate::config::sources::sanitize_name(&base)
}

/// The config of the one server, as the service reads it: run where the
/// bridge was started, its words as given (`$` is not expanded).
fn config(args: &BridgeArgs, name: &str, (host, port): (&str, u16), cwd: &Path) -> serde_json::Value {
    let session = match args.session {
        Session::Shared => "shared",
        Session::PerClient => "per_client",
    };
    let literal = |word: &String| word.replace('$', "$$");
    json!({
        "manager": {
            "api": { "host": host, "port": port },
            "gateway": { "prefix": "on_conflict" },
        },
        "servers": {
            name: {
                "command": literal(&args.command[0]),
                "args": args.command[1..].iter().map(literal).collect::<Vec<_>>(),
                "working_directory": literal(&cwd.to_string_lossy().into_owned()),
                "session": session,
            }
        }
    })
}

pub fn run(_globals: &Globals, args: BridgeArgs) -> anyhow::Result<ExitCode> {
    let (host, port) = args
        .listen
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>().ok()?,
            ))
        })
        .with_context(|| format!("--listen wants HOST:PORT, got `{}`", args.listen))?;
    let name = match &args.name {
        Some(name) if crate::config::sources::is_valid_name(name) => name.clone(),
        Some(name) => bail!("`{name}` is not a server name (letters, digits, `-`, `_`)"),
        None => name_for(&args.command[0]),
    };
    // Its own config and state, gone with the bridge: nothing is shared with
    // a service on the same machine.
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let dir = BridgeDir(private_dir()?);
    let config_dir = dir.0.join("config");
    let state_dir = dir.0.join("state");
    std::fs::create_dir(&config_dir).with_context(|| format!("cannot create {}", config_dir.display()))?;
    // JSON is YAML: the loader reads it as any config file.
    let config_file = config_dir.join("mcp-manager.yaml");
    std::fs::write(
        &config_file,
        serde_json::to_string_pretty(&config(&args, &name, (&host, port), &cwd))?,
    )?;
    let paths = vec![config_file];
    let initial = service::initial_load(&paths);
    if initial.has_errors() {
        let problems: Vec<String> = initial.diagnostics.iter().map(|d| d.message.clone()).collect();
        bail!("{}", problems.join("; "));
    }
    super::logging::init(&initial.desired.manager, None);
    let options = service::ServeOptions {
        reconcile: reconciler::Options {
            config_paths: paths,
            monitoring: true,
            secret_key: crate::config::process_key(),
            tokens_dir: None,
            kubernetes: None,
        },
        state_dir,
        api_port: Some(port),
        args: std::env::args().skip(1).collect(),
        progress: false,
        bridge: true,
    };
    let threads = args
        .threads
        .map(usize::from)
        .or_else(super::service::worker_threads_env)
        .unwrap_or(1);
    let runtime = super::service::runtime_with(Some(threads))?;
    let outcome = runtime.block_on(service::serve(options, initial));
    drop(dir);
    outcome.map(|()| ExitCode::SUCCESS)
}

/// A new folder only this user can enter, under a name nobody could create
/// first (a clash is tried again, never reused).
fn private_dir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::temp_dir();
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!("mcp-manager-bridge-{}-{nanos:x}{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    bail!("cannot create a private folder in {}", base.display())
}

/// The bridge's own folder (config and state), removed when it ends.
struct BridgeDir(std::path::PathBuf);

impl Drop for BridgeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_command() {
        assert_eq!(name_for("/usr/bin/mcp-server-time"), "mcp-server-time");
        assert_eq!(name_for("npx"), "npx");
        assert_eq!(name_for("my.server.py"), "my-server-py");
    }
}
