//! Gateway commands: `connect` (a stdio MCP endpoint for desktop clients),
//! `capabilities` and `approve`.

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::Globals;
use super::client::{ApiClient, NotRunning};
use super::output::Table;
use super::service::runtime;

#[derive(Debug, clap::Args)]
pub struct CapabilitiesArgs {
    /// Only this server's tools, resources and prompts
    #[arg(long, value_name = "NAME")]
    server: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The server whose changed tools to approve
    server: String,
    /// Only this tool (default: every changed tool of the server)
    tool: Option<String>,
}

/// `mcp-manager connect`: relays this process's stdin/stdout to the running
/// service's gateway socket, byte for byte. The service's rmcp server does all
/// the MCP work; this side never parses a message, so it adds almost nothing.
pub fn connect(globals: &Globals) -> anyhow::Result<ExitCode> {
    let not_running = || NotRunning {
        state_dir: globals.state_dir.display().to_string(),
    };
    let info = crate::service::read_info(&globals.state_dir).ok_or_else(not_running)?;
    if !std::path::Path::new(&format!("/proc/{}", info.pid)).exists() {
        return Err(not_running().into());
    }
    let path = crate::service::socket_path(&globals.state_dir);
    let rt = runtime()?;
    rt.block_on(async move {
        let socket = tokio::net::UnixStream::connect(&path)
            .await
            .with_context(|| format!("cannot connect to the gateway at {}", path.display()))?;
        let (mut from_service, mut to_service) = socket.into_split();
        // Non-blocking pipes when stdio are pipes (as MCP clients set them up).
        let (mut stdin, mut stdout) = rmcp::transport::stdio_pipes();
        let upstream = async {
            let _ = tokio::io::copy(&mut stdin, &mut to_service).await;
            // The client closed stdin: end the session.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_service).await;
        };
        let downstream = tokio::io::copy(&mut from_service, &mut stdout);
        tokio::pin!(upstream);
        tokio::select! {
            result = downstream => {
                // The service closed the session (it stopped or restarted).
                result.context("relaying the gateway's output")?;
                eprintln!("mcp-manager connect: the service closed the connection");
                Ok(ExitCode::from(1))
            }
            () = &mut upstream => {
                // Let the service finish answering what it already has.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::copy(&mut from_service, &mut stdout)).await;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

pub fn capabilities(globals: &Globals, args: CapabilitiesArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = ApiClient::connect(&globals.state_dir)?;
    let path = match &args.server {
        Some(server) => format!("/capabilities?server={server}"),
        None => "/capabilities".into(),
    };
    let value = rt.block_on(client.get(&path))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_capabilities(&value));
    Ok(ExitCode::SUCCESS)
}

fn render_capabilities(value: &Value) -> String {
    let empty = Vec::new();
    let entries = value["capabilities"].as_array().unwrap_or(&empty);
    let mut table = Table::new(&["KIND", "NAME", "SERVER", "PIN", "DESCRIPTION"]);
    for e in entries {
        let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
        let name = match e["hidden"].as_str() {
            Some(why) => format!("({}: hidden, {why})", text("upstream")),
            None => text("exposed"),
        };
        let mut description = text("description").lines().next().unwrap_or("").to_string();
        if description.chars().count() > 60 {
            description = description.chars().take(57).collect::<String>() + "...";
        }
        table.row(vec![
            text("kind").replace('_', " "),
            name,
            text("server"),
            e["pin"].as_str().unwrap_or("-").to_string(),
            description,
        ]);
    }
    let mut out = if entries.is_empty() {
        "nothing is exposed: no server is running and healthy\n".to_string()
    } else {
        table.render()
    };
    if let Some(down) = value["unavailable"].as_object() {
        for (server, reason) in down {
            out.push_str(&format!("{server}: not available, {}\n", reason.as_str().unwrap_or("")));
        }
    }
    out
}

pub fn approve(globals: &Globals, args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = ApiClient::connect(&globals.state_dir)?;
    let body = json!({ "tool": args.tool });
    let value = rt.block_on(client.post(&format!("/servers/{}/approve", args.server), Some(&body)))?;
    let approved: Vec<&str> = value["approved"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if approved.is_empty() {
        println!("nothing to approve: the tools of {} match their pins", args.server);
    } else {
        println!(
            "approved {} tool definition(s) of {}: {}",
            approved.len(),
            args.server,
            approved.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mcp-manager dashboard`: the dashboard URL. The token travels in the URL
/// fragment, which browsers do not send to servers.
pub fn dashboard(globals: &Globals) -> anyhow::Result<ExitCode> {
    let client = ApiClient::connect(&globals.state_dir)?;
    let token = std::fs::read_to_string(crate::service::token_path(&globals.state_dir))?;
    println!("{}/#token={}", client.info.url, token.trim());
    Ok(ExitCode::SUCCESS)
}
