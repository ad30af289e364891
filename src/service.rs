//! `mcp-manager start`: wires the state store, reconciler, watcher and API
//! together, and tells CLI clients where to find it.
//!
//! The state dir holds `api-token` (0600, made on first start) and, while the
//! service runs, `service.json` with its pid and API address.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Environment, LoadOutcome};
use crate::reconciler::{self, Reconciler, Request};
use crate::state::{StateError, StateStore};
use crate::{api, discovery, watch};

/// Where a running service can be reached; `service.json` in the state dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub pid: u32,
    pub url: String,
    pub started_at_ms: u64,
    pub version: String,
    pub config_paths: Vec<PathBuf>,
    /// The `start` arguments, so `mcp-manager restart` can start it the same way.
    pub args: Vec<String>,
}

pub fn info_path(state_dir: &Path) -> PathBuf {
    state_dir.join("service.json")
}

pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("api-token")
}

/// The gateway's local socket, which `mcp-manager connect` relays stdio to.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("gateway.sock")
}

/// Serves the gateway on a Unix socket in the state dir (mode 0600: only the
/// user who can read the API token can connect). Each connection is one MCP
/// session, newline-delimited JSON-RPC, served by rmcp.
fn serve_gateway_socket(
    state_dir: &Path,
    registry: Arc<crate::gateway::Registry>,
    stop: CancellationToken,
) -> std::io::Result<PathBuf> {
    use rmcp::ServiceExt;
    let path = socket_path(state_dir);
    // We hold the state store's lock, so a socket left here is stale.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("gateway socket: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let server = crate::gateway::GatewayServer::new(registry.clone());
            let stop = stop.child_token();
            tokio::spawn(async move {
                match server.serve_with_ct(stream, stop).await {
                    Ok(session) => {
                        let _ = session.waiting().await;
                    }
                    Err(e) => tracing::debug!("gateway session ended before it began: {e}"),
                }
            });
        }
    });
    Ok(path)
}

/// The API token, made (random, mode 0600) on first use.
pub fn ensure_token(state_dir: &Path) -> std::io::Result<String> {
    let path = token_path(state_dir);
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_string();
        if token.len() >= 32 {
            // Keep the file private even if someone loosened it.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(token);
        }
    }
    let token = crate::config::view::hex(&crate::config::random_key()?);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

/// Reads `service.json`, if a service wrote one.
pub fn read_info(state_dir: &Path) -> Option<ServiceInfo> {
    let text = std::fs::read_to_string(info_path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_info(state_dir: &Path, info: &ServiceInfo) -> std::io::Result<()> {
    let path = info_path(state_dir);
    let tmp = state_dir.join(".service.json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(info).unwrap_or_default())?;
    std::fs::rename(tmp, path)
}

/// How to run the service.
pub struct ServeOptions {
    pub reconcile: reconciler::Options,
    pub state_dir: PathBuf,
    /// API port on 127.0.0.1 (0: any free port; the choice is in service.json).
    pub api_port: Option<u16>,
    pub args: Vec<String>,
    /// Draw a startup progress bar on stdout (a terminal).
    pub progress: bool,
    /// `bridge`: `/mcp` takes no bearer token (the listener is the boundary),
    /// and the service ends with an error once a server has failed for good.
    pub bridge: bool,
}

/// Samples every server's gateway metrics into its history until `stop`.
fn sample_history(registry: Arc<crate::gateway::registry::Registry>, stop: CancellationToken) {
    tokio::spawn(async move {
        let every = std::time::Duration::from_millis(crate::gateway::metrics::HISTORY_INTERVAL_MS);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => registry.sample_history(crate::now_ms()),
                () = stop.cancelled() => return,
            }
        }
    });
}

/// Draws `[#####.....] 12/50 servers running` until every enabled server is
/// running or has failed.
fn show_progress(mut snapshots: tokio::sync::watch::Receiver<Arc<reconciler::Snapshot>>) {
    use crate::state::Phase;
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let s = snapshots.borrow_and_update().clone();
            let wanted: Vec<_> = s.servers.iter().filter(|x| x.enabled && !x.suspended).collect();
            if wanted.is_empty() {
                continue;
            }
            let total = wanted.len();
            let running = wanted.iter().filter(|x| x.phase == Phase::Running).count();
            let failed = wanted.iter().filter(|x| x.phase == Phase::Failed).count();
            let width = 30;
            let done = (running + failed) * width / total;
            let failed_text = if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            };
            crate::terminal::show(&format!(
                "[{}{}] {running}/{total} servers running{failed_text}",
                "#".repeat(done),
                ".".repeat(width - done)
            ));
            if running + failed == total {
                crate::terminal::finish();
                return;
            }
        }
    });
}

/// Runs the service until SIGINT, SIGTERM or `POST /api/v1/shutdown`; then stops
/// every server and returns.
pub async fn serve(options: ServeOptions, initial: LoadOutcome) -> anyhow::Result<()> {
    let state_dir = &options.state_dir;
    let store = match StateStore::open(state_dir) {
        Ok(store) => store,
        Err(StateError::Locked { .. }) => {
            let who = read_info(state_dir)
                .map(|i| format!(" (pid {}, {})", i.pid, i.url))
                .unwrap_or_default();
            anyhow::bail!(
                "another mcp-manager service is already running for {}{who}; use `mcp-manager status`, or give another --state-dir",
                state_dir.display()
            );
        }
        Err(e) => return Err(e).context("cannot open the state store"),
    };
    let token = ensure_token(state_dir).context("cannot create the API token")?;
    let manager = initial.desired.manager.clone();
    let mut reconcile = options.reconcile.clone();
    reconcile.secret_key =
        crate::state::ensure_secret_key(state_dir).context("cannot create the secret fingerprint key")?;
    reconcile.tokens_dir = Some(crate::transport::oauth::tokens_dir(state_dir));
    // `backend: kubernetes`: a controller keeps the cluster matching the
    // config (read at start, like the API's address).
    let mut controller_parts = None;
    if manager.backend == crate::config::manager::Backend::Kubernetes {
        let cluster = crate::kubernetes::cluster::Cluster::connect(&manager.kubernetes)
            .await
            .context("manager.backend is kubernetes")?;
        let (desired_tx, desired_rx) = tokio::sync::watch::channel(None);
        let (apply_tx, apply_rx) = tokio::sync::mpsc::channel(4);
        reconcile.kubernetes = Some(reconciler::KubernetesHooks {
            namespace: cluster.namespace.clone(),
            settings: manager.kubernetes.clone(),
            desired: desired_tx,
            apply: apply_tx,
        });
        tracing::info!(
            "servers run in namespace {} of the cluster at {}",
            cluster.namespace,
            cluster.url
        );
        controller_parts = Some((cluster, desired_rx, apply_rx));
    }
    let (reconciler, handle) = Reconciler::new(reconcile, store)?;
    let controller_stop = CancellationToken::new();
    if let Some((cluster, desired, applies)) = controller_parts {
        let controller = crate::kubernetes::controller::Controller::new(cluster, desired, applies, handle.clone());
        tokio::spawn(controller.run(controller_stop.clone()));
    }

    let host = manager.api.host.clone();
    let port = options.api_port.unwrap_or(manager.api.port);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let address = listener.local_addr()?;
    let shutdown = Arc::new(Notify::new());
    let gateway_stop = CancellationToken::new();
    let app = api::router(
        handle.clone(),
        token,
        shutdown.clone(),
        gateway_stop.clone(),
        (&host, address.port()),
        manager.gateway.session_idle_timeout,
        options.bridge,
    );
    let socket = serve_gateway_socket(state_dir, handle.registry.clone(), gateway_stop.clone())
        .context("cannot open the gateway socket")?;
    sample_history(handle.registry.clone(), gateway_stop.clone());
    let api_stop = Arc::new(Notify::new());
    let api_stopped = api_stop.clone();
    // No Nagle delay: a response written in two parts must not wait for the
    // client's delayed ACK (40 ms stalls for keep-alive MCP clients).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { api_stopped.notified().await })
            .await;
        if let Err(e) = result {
            tracing::error!("API server: {e}");
        }
    });

    let _watch = match watch::spawn(
        &options.reconcile.config_paths,
        vec![state_dir.clone()],
        manager.reconcile.debounce,
        handle.requests.clone(),
        handle.snapshot.clone(),
    ) {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::error!("cannot watch the config files ({e}); changes need `mcp-manager restart`");
            None
        }
    };

    let info = ServiceInfo {
        pid: std::process::id(),
        url: format!("http://{address}"),
        started_at_ms: crate::now_ms(),
        version: env!("CARGO_PKG_VERSION").into(),
        config_paths: options
            .reconcile
            .config_paths
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .collect(),
        args: options.args.clone(),
    };
    write_info(state_dir, &info).context("cannot write service.json")?;
    tracing::info!("mcp-manager {} serving its API on {}", info.version, info.url);

    let state_file = spawn_state_file_writer(&handle);
    let requests = handle.requests.clone();
    if options.progress {
        show_progress(handle.snapshot.clone());
    }
    let mut loop_task = tokio::spawn(reconciler.run());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let given_up = first_failure(handle.snapshot.clone(), options.bridge);
    let mut failure = None;
    let finished_early = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); false }
        _ = sigterm.recv() => { tracing::info!("terminated; stopping"); false }
        () = shutdown.notified() => { tracing::info!("shutdown requested; stopping"); false }
        why = given_up => { tracing::error!("{why}; stopping"); failure = Some(why); false }
        _ = &mut loop_task => true,
    };
    // The start-up bar ends here if it has not yet (the log of the stop goes below it).
    crate::terminal::finish();
    // The cluster's servers keep running: stopping the service changes nothing there.
    controller_stop.cancel();
    if !finished_early {
        // The reconciler keeps its own deadline (and kills what is left at it);
        // this one only guards against a reconciler that cannot answer at all.
        let limit = std::time::Duration::from_millis(handle.snapshot.borrow().shutdown_limit_ms)
            + std::time::Duration::from_secs(5);
        let (tx, rx) = tokio::sync::oneshot::channel();
        if requests.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
        let _ = tokio::time::timeout(limit, loop_task).await;
    }
    state_file.abort();
    let final_state = handle.snapshot.borrow().manager.storage.state_file.clone();
    if let Some(path) = final_state {
        // Every server is down now: say so in the file too.
        if let Err(e) = state_file_text(&handle.store).and_then(|text| write_private_file(Path::new(&path), &text)) {
            tracing::warn!("cannot write storage.state_file: {e}");
        }
    }
    let _ = std::fs::remove_file(info_path(state_dir));
    // `start --daemon` wrote a pid file for us; it is stale now.
    let pid_file = state_dir.join("mcp-manager.pid");
    if std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(pid_file);
    }
    gateway_stop.cancel();
    let _ = std::fs::remove_file(socket);
    api_stop.notify_one();
    // Streams end with `gateway_stop`; a connection that still lingers (a
    // client that never reads) does not hold the process and its store lock.
    if tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("the API did not close its connections in 5 s; leaving them");
    }
    tracing::info!("stopped");
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// With `watch` (bridge), the first server that failed for good (it could
/// not be started, or crashed more than `max_restart_attempts` times), in
/// words; else never.
async fn first_failure(mut snapshots: tokio::sync::watch::Receiver<Arc<reconciler::Snapshot>>, watch: bool) -> String {
    if !watch {
        return std::future::pending().await;
    }
    loop {
        let failed = snapshots
            .borrow_and_update()
            .servers
            .iter()
            .find(|s| s.phase == crate::state::Phase::Failed)
            .map(|s| {
                format!(
                    "{} failed: {}",
                    s.name,
                    s.last_error.as_deref().unwrap_or("no reason given")
                )
            });
        if let Some(why) = failed {
            return why;
        }
        if snapshots.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// `storage.state_file`: keeps a JSON copy of the observed state at that path
/// (what `/api/v1/observed` serves: secrets are fingerprints), rewritten at most
/// once a second after changes, atomically, mode 0600. The service writes it a
/// last time when every server is down.
fn spawn_state_file_writer(handle: &reconciler::Handle) -> tokio::task::JoinHandle<()> {
    let mut snapshot = handle.snapshot.clone();
    let store = handle.store.clone();
    tokio::spawn(async move {
        let mut last: Option<(PathBuf, Vec<u8>)> = None;
        loop {
            if snapshot.changed().await.is_err() {
                return;
            }
            let Some(path) = snapshot.borrow_and_update().manager.storage.state_file.clone() else {
                continue;
            };
            let path = PathBuf::from(path);
            let store = store.clone();
            let previous = last.take();
            let written = tokio::task::spawn_blocking(move || {
                let text = state_file_text(&store)?;
                if !previous.as_ref().is_some_and(|(p, t)| *p == path && *t == text) {
                    write_private_file(&path, &text)?;
                }
                Ok::<_, std::io::Error>((path, text))
            })
            .await;
            match written {
                Ok(Ok(done)) => last = Some(done),
                Ok(Err(e)) => tracing::warn!("cannot write storage.state_file: {e}"),
                Err(_) => return,
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

fn state_file_text(store: &StateStore) -> std::io::Result<Vec<u8>> {
    let observed = store.load().map_err(std::io::Error::other)?;
    serde_json::to_vec_pretty(&observed).map_err(std::io::Error::other)
}

/// Writes `bytes` to `path` (creating its folder), mode 0600, atomically.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomically(path, bytes, 0o600)
}

/// Loads the config for `start` (also to print problems before anything runs).
pub fn initial_load(paths: &[PathBuf]) -> LoadOutcome {
    load_for_backend(paths, crate::config::process_key())
}

/// The config as its backend reads it: with `backend: kubernetes`, no value
/// of the environment in a server's command line (`Environment::for_cluster`).
pub fn load_for_backend(paths: &[PathBuf], key: crate::config::view::SecretKey) -> LoadOutcome {
    let outcome = discovery::load_config(paths, &Environment::process_with_key(key));
    if outcome.desired.manager.backend == crate::config::manager::Backend::Kubernetes {
        return discovery::load_config(paths, &Environment::for_cluster(key));
    }
    outcome
}
