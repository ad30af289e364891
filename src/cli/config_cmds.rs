//! `discover`, `validate` and `list-servers --config`: config without a service.

use std::process::ExitCode;

use anyhow::Context;

use serde::Serialize;
use serde_json::Value;

use crate::config::view::redact;
use crate::config::{Diagnostic, LoadOutcome, Provenance, SourceKind};
use crate::plan::display_path;
use crate::reconciler::RescanReport;

use super::output::{Table, plural, print_diagnostics, print_json, report_load};
use super::{ConfigPaths, Globals};

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    config: ConfigPaths,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Ask the running service to re-scan its config now, and print what changed
    #[arg(long)]
    rescan: bool,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    config: ConfigPaths,
    /// Print the problems as JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListServersArgs {
    /// List the servers of the config files (PATH repeatable, default ./) rather than the running service's
    #[arg(long = "config", short = 'c', value_name = "PATH", num_args = 0..)]
    config: Option<Vec<std::path::PathBuf>>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Only servers in this phase or health (running, failed, healthy, ...); needs the service
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
}

fn load(config: &ConfigPaths) -> LoadOutcome {
    crate::service::load_for_backend(&config.resolve(), crate::config::process_key())
}

#[derive(Serialize)]
struct DiscoveredRow<'a> {
    name: &'a str,
    source: SourceKind,
    file: String,
    line: u32,
    column: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_type: Option<&'static str>,
    enabled: bool,
    inferred: bool,
    /// `ok`, `invalid` (has errors) or `shadowed` (an explicit definition wins).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// `discover --rescan`: the running service re-reads its config (from its own
/// `--config` paths) and says what changed.
fn rescan(globals: &Globals, json: bool) -> anyhow::Result<ExitCode> {
    let client = super::client::ApiClient::connect(&globals.state_dir)?;
    let rt = super::service::runtime()?;
    let value = rt.block_on(client.post("/rescan", None))?;
    let report: RescanReport = serde_json::from_value(value).context("the service sent an unreadable report")?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let list = |names: &[String]| names.join(", ");
    println!("Re-scanned {} config file{}.", report.files, plural(report.files));
    if report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty() {
        println!("No server was added, removed or changed.");
    }
    for (what, names) in [
        ("added", &report.added),
        ("removed", &report.removed),
        ("changed", &report.changed),
    ] {
        if !names.is_empty() {
            println!("{} server{} {what}: {}", names.len(), plural(names.len()), list(names));
        }
    }
    if let Some(reason) = &report.pending {
        println!("The changes wait for `mcp-manager apply`: {reason}");
    }
    if report.errors > 0 {
        eprintln!(
            "{} config error{}; the last good state keeps running (see `mcp-manager status`)",
            report.errors,
            plural(report.errors)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn discover(globals: &Globals, args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    if args.rescan {
        match rescan(globals, args.json) {
            Err(e) if e.downcast_ref::<super::client::NotRunning>().is_some() => {
                eprintln!(
                    "no service is running, so there is nothing to re-scan; this is what the config files hold:\n"
                );
            }
            other => return other,
        }
    }
    let outcome = load(&args.config);
    let rel = globals.relative_to();
    let mut rows: Vec<DiscoveredRow<'_>> = Vec::new();
    let row = |name, p: &Provenance, status, ct, enabled, inferred, note| DiscoveredRow {
        name,
        source: p.source,
        file: display_path(&p.file, rel),
        line: p.line,
        column: p.column,
        connection_type: ct,
        enabled,
        inferred,
        status,
        note,
    };
    for s in outcome.desired.servers.values() {
        let note = s.spec.description.clone();
        rows.push(row(
            &s.name,
            &s.provenance,
            "ok",
            Some(s.spec.connection_type.as_str()),
            s.spec.enabled,
            s.inferred,
            note,
        ));
    }
    for s in &outcome.shadowed {
        let note = format!(
            "shadowed by {}:{}",
            display_path(&s.shadowed_by.file, rel),
            s.shadowed_by.line
        );
        rows.push(row(&s.name, &s.provenance, "shadowed", None, false, true, Some(note)));
    }
    for (name, p) in &outcome.rejected {
        rows.push(row(
            name,
            p,
            "invalid",
            None,
            false,
            p.source == SourceKind::Script,
            Some("see `mcp-manager validate`".into()),
        ));
    }
    rows.sort_by(|a, b| (a.name, &a.file).cmp(&(b.name, &b.file)));

    if args.json {
        print_json(&serde_json::json!({"servers": rows, "errors": outcome.error_count()}))?;
    } else {
        let mut table = Table::new(&["NAME", "SOURCE", "LOCATION", "TYPE", "ENABLED", "INFERRED", "STATUS"]);
        for r in &rows {
            table.row(vec![
                r.name.to_string(),
                r.source.as_str().to_string(),
                format!("{}:{}", r.file, r.line),
                r.connection_type.unwrap_or("-").to_string(),
                yes_no(r.enabled),
                yes_no(r.inferred),
                match &r.note {
                    Some(n) if r.status != "ok" => format!("{} ({n})", r.status),
                    _ => r.status.to_string(),
                },
            ]);
        }
        print!("{}", table.render());
        let inferred_off = rows
            .iter()
            .filter(|r| r.inferred && !r.enabled && r.status == "ok")
            .count();
        if inferred_off > 0 {
            println!(
                "\n{inferred_off} inferred server{} not enabled; enable with `manager.discovery.enable_inferred: [NAME]` (or `true`)",
                plural(inferred_off)
            );
        }
    }
    let errors = outcome.error_count();
    if errors > 0 {
        eprintln!(
            "{errors} config error{}; run `mcp-manager validate` to see them",
            plural(errors)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

pub fn validate(globals: &Globals, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let outcome = load(&args.config);
    let errors = outcome.error_count();
    if args.json {
        let diagnostics: Vec<&Diagnostic> = outcome.diagnostics.iter().collect();
        print_json(&serde_json::json!({
            "valid": errors == 0,
            "servers": outcome.desired.servers.len(),
            "diagnostics": diagnostics,
        }))?;
    } else if errors > 0 {
        report_load(globals, &outcome);
    } else {
        print_diagnostics(globals, &outcome.diagnostics);
        let n = outcome.desired.servers.len();
        println!("The configuration is valid: {n} server{}.", plural(n));
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn list_servers(globals: &Globals, args: ListServersArgs) -> anyhow::Result<ExitCode> {
    let Some(paths) = args.config else {
        return super::service::list_running(globals, args.status, args.json);
    };
    let outcome = load(&ConfigPaths { paths });
    if report_load(globals, &outcome) {
        return Ok(ExitCode::from(1));
    }
    let rel = globals.relative_to();
    if args.json {
        let servers: Vec<Value> = outcome
            .desired
            .servers
            .values()
            .map(|s| {
                let spec = redact(&Value::Object(s.view.clone().into_iter().collect()));
                serde_json::json!({
                    "name": s.name,
                    "inferred": s.inferred,
                    "provenance": {"file": display_path(&s.provenance.file, rel), "line": s.provenance.line, "column": s.provenance.column, "source": s.provenance.source},
                    "spec": spec,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "servers": servers }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "TYPE", "ENABLED", "REPLICAS", "PRIORITY", "TAGS", "TARGET"]);
    for s in outcome.desired.servers.values() {
        let target = crate::plan::target(&s.view);
        let target = target.split_once(": ").map_or(target.clone(), |(_, t)| t.to_string());
        table.row(vec![
            s.name.clone(),
            s.spec.connection_type.as_str().into(),
            yes_no(s.spec.enabled),
            s.spec.replicas.to_string(),
            s.spec.priority.to_string(),
            if s.spec.tags.is_empty() {
                "-".into()
            } else {
                s.spec.tags.join(",")
            },
            target,
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
