//! `plan` and `apply` with `manager.backend: kubernetes`: the plan is made
//! against the cluster, and `apply` carries it out there itself (no running
//! service needed, as with Terraform).

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::config::DesiredState;
use crate::kubernetes::cluster::Cluster;
use crate::kubernetes::{self, Rendered};
use crate::plan::{self, Plan, RenderOptions};

use super::Globals;

/// The rendered objects of a config, or why it cannot be deployed (printed).
pub fn render(desired: &DesiredState) -> Option<Rendered> {
    let rendered = kubernetes::render(desired);
    for note in &rendered.notes {
        eprintln!("note: {note}");
    }
    for error in &rendered.errors {
        eprintln!("error: {error}");
    }
    rendered.errors.is_empty().then_some(rendered)
}

/// Connects to the cluster of the config and plans against it. Also says
/// which servers are held back (an object of their name is not ours).
pub async fn plan_against_cluster(
    desired: &DesiredState,
    rendered: &Rendered,
) -> anyhow::Result<(Plan, Cluster, BTreeMap<String, String>)> {
    let cluster = Cluster::connect(&desired.manager.kubernetes).await?;
    let live = cluster.observe(rendered).await?;
    Ok((kubernetes::plan::plan(desired, rendered, &live), cluster, live.blocked))
}

/// `apply` against the cluster: re-plans; with a saved plan, refuses it
/// (exit 3) if the config or the cluster changed since; asks unless
/// `auto_approve`; then applies and deletes.
pub fn apply(
    globals: &Globals,
    desired: &DesiredState,
    saved: Option<&Plan>,
    auto_approve: bool,
) -> anyhow::Result<ExitCode> {
    let Some(rendered) = render(desired) else {
        return Ok(ExitCode::from(1));
    };
    let runtime = super::service::runtime()?;
    let (plan, cluster, mut blocked) = runtime.block_on(plan_against_cluster(desired, &rendered))?;
    // A server held back is not applied: `apply` did not do all it was asked.
    let held_back = |blocked: &BTreeMap<String, String>| {
        for why in blocked.values() {
            eprintln!("error: {why}");
        }
        if blocked.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    };
    if let Some(saved) = saved
        && (saved.desired_hash != plan.desired_hash || saved.observed_hash != plan.observed_hash)
    {
        let what = if saved.desired_hash != plan.desired_hash {
            "the config"
        } else {
            "the cluster"
        };
        eprintln!("error: the saved plan is stale: {what} changed since it was made; run `mcp-manager plan` again");
        return Ok(ExitCode::from(3));
    }
    let options = RenderOptions {
        color: globals.color_stdout(),
        relative_to: globals.relative_to(),
    };
    print!("{}", plan::render_text(&plan, &options));
    if !plan.has_changes() {
        return Ok(held_back(&blocked));
    }
    if !auto_approve
        && !super::output::confirm(&format!(
            "Do you want to perform these actions in namespace {} of {}?",
            cluster.namespace, cluster.url
        ))?
    {
        println!("Apply cancelled.");
        return Ok(ExitCode::from(1));
    }
    println!();
    let executed = runtime.block_on(cluster.execute(&plan, &rendered))?;
    for line in &executed.done {
        println!("{line}");
    }
    // What was carried out: the plan less the servers held back at the last moment.
    let carried: Vec<_> = plan
        .actions
        .iter()
        .filter(|a| !executed.held.contains_key(&a.server))
        .cloned()
        .collect();
    let s = plan::summarize(&carried);
    blocked.extend(executed.held);
    println!(
        "\nApplied to namespace {}: {} started, {} rolled, {} updated, {} scaled, {} removed. Pods roll out now: follow with `mcp-manager plan` or kubectl.",
        cluster.namespace, s.start, s.restart, s.update, s.scale, s.stop
    );
    Ok(held_back(&blocked))
}
