//! `mcp-manager plan`: what would change, and why.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::manager::Backend;
use crate::plan::{self, Plan, RenderOptions};
use crate::state;

use super::output::{print_json, report_load};
use super::{ConfigPaths, Globals};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    config: ConfigPaths,
    /// Print the plan as JSON (format: docs/plan-json.md)
    #[arg(long)]
    json: bool,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error
    #[arg(long)]
    detailed_exitcode: bool,
    /// Save the plan, with the hashes it was made from, for a later `apply PLANFILE`
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// A plan saved with `--out`: `apply` re-plans and refuses it if either hash moved.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    #[serde(flatten)]
    pub plan: Plan,
    /// The config paths the plan was made from (absolute).
    pub config_paths: Vec<PathBuf>,
    pub state_dir: PathBuf,
}

pub fn run(globals: &Globals, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let paths = args.config.resolve();
    // Fingerprinted like the service does, so the plan compares like with like.
    let key = state::read_secret_key(&globals.state_dir).unwrap_or_else(crate::config::process_key);
    let outcome = crate::service::load_for_backend(&paths, key);
    if report_load(globals, &outcome) {
        return Ok(ExitCode::from(1));
    }
    // Warnings (e.g. insecure TLS) still go to stderr.
    let plan = match outcome.desired.manager.backend {
        Backend::Local => plan::plan(&outcome.desired, &observed_state(globals)?),
        Backend::Kubernetes => {
            let Some(rendered) = super::kube::render(&outcome.desired) else {
                return Ok(ExitCode::from(1));
            };
            let runtime = super::service::runtime()?;
            runtime
                .block_on(super::kube::plan_against_cluster(&outcome.desired, &rendered))?
                .0
        }
    };

    if let Some(out) = &args.out {
        let saved = SavedPlan {
            plan: plan.clone(),
            config_paths: paths
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .collect(),
            state_dir: globals.state_dir.clone(),
        };
        crate::fsutil::write_atomically(out, &serde_json::to_vec_pretty(&saved)?, 0o666)
            .with_context(|| format!("cannot save the plan to {}", out.display()))?;
    }
    if args.json {
        print_json(&plan)?;
    } else {
        let text = plan::render_text(
            &plan,
            &RenderOptions {
                color: globals.color_stdout(),
                relative_to: globals.relative_to(),
            },
        );
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        if let Some(out) = &args.out {
            writeln!(
                stdout,
                "\nSaved the plan to {}; apply exactly this plan with `mcp-manager apply {}`.",
                out.display(),
                out.display()
            )?;
        }
    }
    Ok(if args.detailed_exitcode && plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Observed state from the running service if there is one (it holds the store),
/// else straight from the store.
fn observed_state(globals: &Globals) -> anyhow::Result<state::ObservedState> {
    match super::client::ApiClient::connect(&globals.state_dir) {
        Ok(client) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let value = runtime.block_on(client.get("/observed"))?;
            serde_json::from_value(value).context("the service sent unreadable observed state")
        }
        Err(_) => state::read_observed(&globals.state_dir).context("cannot read observed state"),
    }
}
