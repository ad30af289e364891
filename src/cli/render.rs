//! `mcp-manager render kubernetes`: the manifests of the config, for teams
//! whose GitOps commits manifests (Argo CD, Flux).

use std::process::ExitCode;

use super::output::report_load;
use super::{ConfigPaths, Globals};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Target {
    /// A Deployment and a Service per stdio server (behind `mcp-manager bridge`)
    Kubernetes,
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// What to render
    #[arg(value_enum)]
    target: Target,
    #[command(flatten)]
    config: ConfigPaths,
}

pub fn run(globals: &Globals, args: RenderArgs) -> anyhow::Result<ExitCode> {
    let Target::Kubernetes = args.target;
    // As `apply` sends them: no value of this shell in a server's command
    // line (`${VAR}` there becomes `$(VAR)`, which Kubernetes expands from
    // the container's env).
    let environment = crate::config::Environment::for_cluster(crate::config::process_key());
    let outcome = crate::discovery::load_config(&args.config.resolve(), &environment);
    if report_load(globals, &outcome) {
        return Ok(ExitCode::from(1));
    }
    let Some(rendered) = super::kube::render(&outcome.desired) else {
        return Ok(ExitCode::from(1));
    };
    print!("{}", crate::kubernetes::to_yaml(&rendered.documents));
    Ok(ExitCode::SUCCESS)
}
