//! `mcp-manager login SERVER` / `logout SERVER`: the OAuth tokens of a
//! remote server, kept in the state dir where the service finds them.

use std::process::ExitCode;

use anyhow::{anyhow, bail};

use super::client::ApiClient;
use super::service::runtime;
use super::{ConfigPaths, Globals};
use crate::config::ConnectionType;
use crate::config::spec::AuthSettings;
use crate::transport::oauth::{self, Authorizer, Browser, FileStore};
use crate::transport::{self, ConnectError};

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The server to log in to (a streamable HTTP server)
    server: String,
    /// Print the authorization URL instead of opening a browser (a remote
    /// shell: open it anywhere, then paste the address the browser lands on)
    #[arg(long)]
    no_browser: bool,
    #[command(flatten)]
    config: ConfigPaths,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The server whose tokens to forget
    server: String,
}

pub fn login(globals: &Globals, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let running = ApiClient::connect(&globals.state_dir).ok();
    // The running service's config, unless --config says otherwise.
    let paths = match (&running, args.config.paths.is_empty()) {
        (Some(api), true) => api.info.config_paths.clone(),
        _ => args.config.resolve(),
    };
    let outcome = crate::discovery::load_config(&paths, &crate::config::Environment::process());
    let Some(server) = outcome.desired.servers.get(&args.server) else {
        bail!(
            "no server named `{}` in {}",
            args.server,
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let spec = &server.spec;
    if spec.connection_type != ConnectionType::Http {
        bail!(
            "`{}` is reached over {}: OAuth is for streamable HTTP servers",
            args.server,
            spec.connection_type.as_str()
        );
    }
    let endpoint = transport::endpoint(spec).map_err(|e| anyhow!(e))?;
    let settings = spec.auth.clone().unwrap_or_else(AuthSettings::oauth);
    let store = FileStore::new(&oauth::tokens_dir(&globals.state_dir), &args.server);
    let browser = if args.no_browser { Browser::Print } else { Browser::Open };
    let rt = runtime()?;
    rt.block_on(async {
        // The server's challenge says where to authorize and which scopes.
        let probe = transport::connect_once((), spec, tokio_util::sync::CancellationToken::new());
        let challenge = match tokio::time::timeout(spec.startup_timeout, probe).await {
            Ok(Err(ConnectError::Unauthorized { challenge, .. })) => Some(challenge),
            Ok(Ok(service)) => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), service.cancel()).await;
                if spec.auth.is_none() {
                    bail!(
                        "`{}` does not ask for authorization (it answered without a token); nothing to log in to",
                        args.server
                    );
                }
                None
            }
            // Discovery without a challenge may still find the server's metadata.
            Ok(Err(_)) | Err(_) => None,
        };
        let mut authorizer = Authorizer::new(&endpoint, oauth::identity(&settings), browser).with_store(store.clone());
        authorizer
            .authorize(challenge.as_deref())
            .await
            .map_err(|e| anyhow!("login to `{}` failed: {e}", args.server))?;
        println!(
            "logged in to {} ({}); tokens in {}",
            args.server,
            transport::display_endpoint(&endpoint),
            store.path().display()
        );
        if let Some(api) = &running {
            // The service picks the tokens up when it connects again.
            match api.post(&format!("/servers/{}/restart", args.server), None).await {
                Ok(_) => println!("the service is reconnecting {}", args.server),
                Err(e) => println!("restart {} to use the tokens: {e}", args.server),
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn logout(globals: &Globals, args: LogoutArgs) -> anyhow::Result<ExitCode> {
    // Names a file in the state dir: a name, never a path.
    if !crate::config::sources::is_valid_name(&args.server) {
        bail!("`{}` is not a server name", args.server);
    }
    let store = FileStore::new(&oauth::tokens_dir(&globals.state_dir), &args.server);
    if store.forget().map_err(|e| anyhow!(e))? {
        println!("forgot the tokens of {}", args.server);
    } else {
        println!("no tokens stored for {}", args.server);
    }
    Ok(ExitCode::SUCCESS)
}
