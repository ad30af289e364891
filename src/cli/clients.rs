//! `client add|remove|list`: sets up desktop MCP clients to use the gateway
//! (the edits themselves are in [`crate::clients`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::Globals;
use super::output::Table;
use crate::clients::{self, Client, Places, Scope};

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Add the gateway to a client's MCP config (a backup is kept; the change is printed).
    Add(EditArgs),
    /// Remove the gateway's entry from a client's MCP config.
    Remove(EditArgs),
    /// Show which clients are set up to use the gateway.
    List,
}

#[derive(Debug, Args)]
struct EditArgs {
    client: Client,
    /// Whose config: the user's (every project) or the project's in the current folder.
    #[arg(long, value_enum, default_value = "user")]
    scope: Scope,
    /// Only print the change; write nothing.
    #[arg(long)]
    print: bool,
}

pub fn run(globals: &Globals, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let places = places()?;
    match args.command {
        ClientCommand::Add(args) => edit(globals, &places, &args, true),
        ClientCommand::Remove(args) => edit(globals, &places, &args, false),
        ClientCommand::List => list(globals, &places),
    }
}

fn places() -> anyhow::Result<Places> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set: cannot find the clients' config files")?;
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| home.join(".config"), PathBuf::from);
    Ok(Places {
        home,
        config_home,
        project: std::env::current_dir().context("cannot read the current directory")?,
        macos: cfg!(target_os = "macos"),
    })
}

/// The entry this binary would write: absolute paths to itself and the state dir.
fn wanted_entry(globals: &Globals, client: Client) -> anyhow::Result<serde_json::Value> {
    let binary = own_path().context("cannot find this program's own path")?;
    let state_dir = std::path::absolute(&globals.state_dir).context("cannot make the state dir absolute")?;
    Ok(client.entry(&binary, &state_dir))
}

/// This binary's path as the user reaches it: a symlink on PATH (a package
/// manager's `bin/`) stays a symlink, so the entry survives an upgrade that moves
/// the real file. Falls back to the resolved path.
fn own_path() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let real = std::fs::canonicalize(&exe)?;
    let is_us = |p: &Path| std::fs::canonicalize(p).is_ok_and(|c| c == real);
    if let Some(arg0) = std::env::args_os().next().map(PathBuf::from) {
        let candidates: Vec<PathBuf> = if arg0.components().count() > 1 {
            vec![arg0]
        } else {
            std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).map(|dir| dir.join(&arg0)).collect())
                .unwrap_or_default()
        };
        if let Some(found) = candidates.into_iter().find(|p| is_us(p)) {
            return std::path::absolute(found);
        }
    }
    Ok(real)
}

/// The file to edit: a symlinked config (a dotfiles repo) is edited where it lives.
fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn read(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn edit(globals: &Globals, places: &Places, args: &EditArgs, add: bool) -> anyhow::Result<ExitCode> {
    let client = args.client;
    let path = resolve(&client.path(args.scope, places)?);
    let before = read(&path)?;
    let problem = |e: clients::ClientError| anyhow::anyhow!("{}: {e}; nothing was changed", path.display());
    let entry = wanted_entry(globals, client)?;
    let after = if add {
        clients::add(client, &before, &entry).map_err(problem)?
    } else {
        match clients::remove(client, &before).map_err(problem)? {
            Some(after) => after,
            None => {
                println!(
                    "{} has no `{}` entry in {}",
                    client.name(),
                    clients::ENTRY,
                    path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    };
    if after == before {
        println!("{} already uses the gateway ({})", client.name(), path.display());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", clients::diff(&path, &before, &after, &entry));
    if args.print {
        println!("(--print: nothing written)");
        return Ok(ExitCode::SUCCESS);
    }
    // The client may have rewritten its file meanwhile (Claude Code does, often):
    // never drop its change.
    if read(&path)? != before {
        anyhow::bail!(
            "{} changed while it was being edited; nothing was written, run this again",
            path.display()
        );
    }
    write(&path, &before, &after)?;
    if add {
        println!(
            "added `{}` to {} ({}); restart {} to load it",
            clients::ENTRY,
            client.name(),
            path.display(),
            client.title()
        );
        if crate::service::read_info(&globals.state_dir).is_none() {
            println!("the gateway needs the service running: `mcp-manager start --config PATH`");
        }
    } else {
        println!(
            "removed `{}` from {} ({})",
            clients::ENTRY,
            client.name(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The first free backup name: `FILE.bak`, then `FILE.bak.1`, ... (an earlier
/// backup, maybe of the original file, is never overwritten).
fn backup_path(path: &Path) -> PathBuf {
    let first = PathBuf::from(format!("{}.bak", path.display()));
    std::iter::once(first.clone())
        .chain((1..1000).map(|n| PathBuf::from(format!("{}.bak.{n}", path.display()))))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or(first)
}

/// Writes `after`, keeping the old file as a backup with its permissions.
fn write(path: &Path, before: &str, after: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(meta) => {
            let backup = backup_path(path);
            crate::fsutil::write_atomically(&backup, before.as_bytes(), meta.permissions().mode() & 0o7777)
                .with_context(|| format!("cannot write the backup {}", backup.display()))?;
            println!("backup: {}", backup.display());
            meta.permissions().mode() & 0o7777
        }
        // Client configs often hold other servers' tokens: a new one is private.
        Err(_) => 0o600,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::fsutil::write_atomically(path, after.as_bytes(), mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn list(globals: &Globals, places: &Places) -> anyhow::Result<ExitCode> {
    let mut table = Table::new(&["CLIENT", "SCOPE", "GATEWAY", "FILE"]);
    for client in Client::ALL {
        let wanted = wanted_entry(globals, client)?;
        for &scope in client.scopes() {
            let path = client.path(scope, places)?;
            let state = match std::fs::read_to_string(resolve(&path)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no config file".to_string(),
                Err(e) => format!("unreadable: {e}"),
                Ok(text) => match clients::current(client, &text) {
                    Err(e) => format!("unreadable: {e}"),
                    Ok(None) => "not set up".to_string(),
                    Ok(Some(entry)) if entry == wanted => "set up".to_string(),
                    Ok(Some(_)) => "set up, for another binary or state dir (`client add` updates it)".to_string(),
                },
            };
            let scope = match scope {
                Scope::User => "user",
                Scope::Project => "project",
            };
            table.row(vec![
                client.name().into(),
                scope.into(),
                state,
                path.display().to_string(),
            ]);
        }
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
