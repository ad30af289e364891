//! OAuth for remote servers, as the MCP authorization spec describes it
//! (2025-11-25 and 2026-07-28). rmcp's `auth` module does the protocol:
//! protected resource and authorization server discovery, issuer checks,
//! client registration, PKCE, resource indicators, token exchange and
//! refresh. This module is the edge around it: the loopback listener that
//! receives the authorization code, opening the browser, which client
//! identity to use, and tokens kept in a file.
//!
//! Token values never leave this module except into an `Authorization`
//! header: messages name servers and endpoints, never a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rmcp::transport::auth::{AuthorizationCallback, ClientCredentialsConfig, OAuthClientConfig};
use rmcp::transport::{
    AuthClient, AuthError, AuthorizationManager, AuthorizationRequest, AuthorizationSession, CredentialRefreshGuard,
    CredentialStore, StoredCredentials,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `login` waits for the browser to come back with a code.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// At most this many authorizations per `call` or `login`: one for the
/// first challenge, then step-ups for scopes the server asks for (a server
/// that keeps asking for a scope it never grants is given up on).
pub const MAX_AUTHORIZATIONS: u32 = 3;

/// The client identity and scopes to authorize with (`auth:` of a server,
/// or the flags of `mcp-manager call`/`login`).
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    /// A pre-registered client; without it the client registers itself.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// A client ID metadata document URL, used when the authorization
    /// server supports them (else dynamic registration).
    pub client_metadata_url: Option<String>,
    /// Scopes to ask for; empty: from the server's challenge, else its
    /// `scopes_supported`, else none.
    pub scopes: Vec<String>,
    /// Headless: the `client_credentials` grant with `client_id`/`client_secret`.
    pub client_credentials: bool,
}

/// How the person authorizing is sent to the authorization page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Browser {
    /// `$BROWSER` (else `xdg-open`), and the URL printed too.
    Open,
    /// Only print the URL (a remote shell): the redirect is caught by the
    /// loopback listener, or pasted on stdin.
    Print,
}

/// Runs authorizations for one MCP endpoint, remembering the scopes granted
/// so far so that a step-up asks for their union with the new ones.
pub struct Authorizer {
    endpoint: String,
    identity: ClientIdentity,
    browser: Browser,
    granted: Vec<String>,
    authorizations: u32,
    /// Where tokens are kept; none: in memory, for this process only.
    store: Option<FileStore>,
}

impl Authorizer {
    pub fn new(endpoint: &str, identity: ClientIdentity, browser: Browser) -> Authorizer {
        Authorizer {
            endpoint: endpoint.to_string(),
            identity,
            browser,
            granted: Vec::new(),
            authorizations: 0,
            store: None,
        }
    }

    /// Tokens go to `store` (and the service finds them there).
    pub fn with_store(mut self, store: FileStore) -> Authorizer {
        self.store = Some(store);
        self
    }

    /// A manager that has no token yet: requests go out without one until a
    /// challenge comes back.
    pub async fn unauthorized(&self) -> Result<AuthorizationManager, String> {
        manager_for(&self.endpoint).await.map_err(|e| describe(&e))
    }

    /// Authorizes against the server's `WWW-Authenticate` challenge (or, with
    /// none, what discovery finds) and returns a manager holding the tokens.
    /// Every error is final for this request: a second try would meet the
    /// same server.
    pub async fn authorize(&mut self, challenge: Option<&str>) -> Result<AuthorizationManager, String> {
        if self.authorizations >= MAX_AUTHORIZATIONS {
            return Err(format!(
                "the server still refuses after {MAX_AUTHORIZATIONS} authorizations{}",
                challenge
                    .and_then(challenge_scope)
                    .map(|s| format!(" (it asks for scope `{s}`)"))
                    .unwrap_or_default()
            ));
        }
        self.authorizations += 1;
        let mut manager = self.unauthorized().await?;
        if let Some(store) = &self.store {
            manager.set_credential_store(store.clone());
        }
        let resolution = manager
            .resolve_metadata_from_challenge(challenge)
            .await
            .map_err(|e| describe(&e))?;
        // The 2025-03-26 guess at `/authorize`, `/token` and `/register` is
        // not tried: later revisions require published metadata, and a
        // server without it most likely wants a static credential.
        if !resolution.source.is_discovered() {
            return Err(
                "the server wants authorization but publishes no OAuth metadata; if it takes a static \
                 credential, give it as a header (`headers:` in the config, `--header` for `call`)"
                    .into(),
            );
        }
        let takes_metadata_documents = resolution
            .metadata
            .additional_fields
            .get("client_id_metadata_document_supported")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        manager.set_metadata(resolution.metadata);
        if self.identity.client_credentials {
            return self.client_credentials(manager).await;
        }
        let scopes = self.scopes(&manager, challenge).await;
        let listener = Callback::bind().await?;
        let redirect = listener.redirect_uri();
        let (request, secret) = self
            .request(&mut manager, takes_metadata_documents, &redirect, &scopes)
            .await?;
        let session = AuthorizationSession::new(manager, request)
            .await
            .map_err(|(_, e)| describe(&e))?;
        let url = session.get_authorization_url().to_string();
        let state = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| u.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.into_owned()))
            .unwrap_or_default();
        open(&url, self.browser);
        let callback = listener.wait(self.browser, &state, LOGIN_TIMEOUT).await?;
        session
            .handle_callback_with_issuer(&callback.code, &callback.csrf_token, callback.issuer.as_deref())
            .await
            .map_err(|e| describe(&e))?;
        self.granted = session.auth_manager.get_current_scopes().await;
        if let Some(store) = &self.store {
            store.save_client(&redirect, secret.as_deref())?;
        }
        Ok(session.auth_manager)
    }

    /// The scopes to ask for: the union of what was granted and what the
    /// challenge names on a step-up; on the first authorization the
    /// configured ones, else the spec's choice (challenge, then the
    /// resource's `scopes_supported`, else none).
    async fn scopes(&self, manager: &AuthorizationManager, challenge: Option<&str>) -> Vec<String> {
        let mut scopes = if self.granted.is_empty() && self.identity.scopes.is_empty() {
            manager.select_initial_scopes(&[]).await
        } else {
            let mut scopes = self.granted.clone();
            scopes.extend(self.identity.scopes.iter().cloned());
            scopes
        };
        if let Some(wanted) = challenge.and_then(challenge_scope) {
            scopes.extend(wanted.split_whitespace().map(str::to_string));
        }
        let mut seen = std::collections::HashSet::new();
        scopes.retain(|s| seen.insert(s.clone()));
        scopes
    }

    /// Which client identity to authorize as: pre-registered, else a client
    /// ID metadata document when the server takes one, else a registration.
    async fn request(
        &self,
        manager: &mut AuthorizationManager,
        takes_metadata_documents: bool,
        redirect: &str,
        scopes: &[String],
    ) -> Result<(AuthorizationRequest, Option<String>), String> {
        let request = AuthorizationRequest::new(redirect)
            .with_scopes(scopes.iter().cloned())
            .with_client_name("mcp-manager");
        if let Some(id) = &self.identity.client_id {
            // The secret stays in the config (not copied to the token file).
            let request = request.with_preregistered_client(id);
            return Ok(match &self.identity.client_secret {
                Some(secret) => (request.with_client_secret(secret), None),
                None => (request, None),
            });
        }
        if let Some(url) = &self.identity.client_metadata_url
            && takes_metadata_documents
        {
            return Ok((request.with_client_metadata_url(url), None));
        }
        // Register here rather than in the session so that a client secret
        // the server issues is kept for the token requests.
        let refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let registered: OAuthClientConfig = manager
            .register_client("mcp-manager", redirect, &refs)
            .await
            .map_err(|e| describe(&e))?;
        let request = request.with_preregistered_client(&registered.client_id);
        Ok(match registered.client_secret {
            Some(secret) if !secret.is_empty() => (request.with_client_secret(secret.clone()), Some(secret)),
            _ => (request, None),
        })
    }

    fn client_credentials_config(&self) -> Result<ClientCredentialsConfig, String> {
        let (Some(client_id), Some(client_secret)) = (&self.identity.client_id, &self.identity.client_secret) else {
            return Err("the client_credentials grant needs `client_id` and `client_secret`".into());
        };
        Ok(ClientCredentialsConfig::ClientSecret {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            scopes: self.identity.scopes.clone(),
            resource: Some(self.endpoint.clone()),
        })
    }

    async fn client_credentials(&mut self, mut manager: AuthorizationManager) -> Result<AuthorizationManager, String> {
        let config = self.client_credentials_config()?;
        manager
            .validate_client_credentials_metadata(&config)
            .map_err(|e| describe(&e))?;
        manager
            .configure_client_credentials(&config)
            .map_err(|e| describe(&e))?;
        manager
            .exchange_client_credentials(&config)
            .await
            .map_err(|e| describe(&e))?;
        Ok(manager)
    }
}

/// rmcp's manager for `endpoint`. Private networks are allowed: managed
/// servers and their authorization servers often live on one (loopback only
/// when the server itself is on loopback; link-local and metadata addresses
/// never).
async fn manager_for(endpoint: &str) -> Result<AuthorizationManager, AuthError> {
    AuthorizationManager::new_allowing_private_addresses(endpoint).await
}

/// The `scope` a `WWW-Authenticate` challenge asks for.
pub fn challenge_scope(challenge: &str) -> Option<&str> {
    // The `scope` parameter, not `scope=` inside another one's quoted value.
    let mut quoted = false;
    let bytes = challenge.as_bytes();
    for (at, byte) in bytes.iter().enumerate() {
        if *byte == b'"' {
            quoted = !quoted;
        }
        let starts = at == 0 || matches!(bytes[at - 1], b' ' | b',');
        if quoted || !starts || !challenge[at..].starts_with("scope=") {
            continue;
        }
        let value = &challenge[at + "scope=".len()..];
        return Some(match value.strip_prefix('"') {
            Some(inner) => inner.split('"').next().unwrap_or_default(),
            None => value.split([',', ' ']).next().unwrap_or_default(),
        });
    }
    None
}

/// An OAuth error in words. rmcp's messages carry URLs (scrubbed of their
/// query, which holds codes and states) and never token values.
pub fn describe(e: &AuthError) -> String {
    let text = match e {
        AuthError::AuthorizationServerMismatch { .. } | AuthError::AuthorizationServerMissingIssuer { .. } => {
            format!("the authorization server's issuer does not check out: {e}")
        }
        AuthError::ProtectedResourceMetadataInvalid { .. } => {
            format!("the server's protected resource metadata is not for this server: {e}")
        }
        _ => e.to_string(),
    };
    // A registration refusal quotes the server's whole answer (an HTML page).
    let text: String = if text.chars().count() > 300 {
        text.chars().take(300).chain("…".chars()).collect()
    } else {
        text
    };
    super::scrub_urls(&text)
}

/// Sends the person to the authorization page: `$BROWSER` (a `:`-separated
/// list of commands, `%s` standing for the URL, as xdg-utils has it), else
/// `xdg-open`; the URL is printed in any case, for a browser elsewhere.
fn open(url: &str, browser: Browser) {
    eprintln!("To authorize, open this URL in a browser:\n\n  {url}\n");
    if browser == Browser::Print {
        eprintln!(
            "Then paste the address the browser lands on here, or leave this running if it can reach this machine."
        );
        return;
    }
    let commands = std::env::var("BROWSER").unwrap_or_default();
    let mut candidates: Vec<String> = commands
        .split(':')
        .filter(|c| !c.trim().is_empty())
        .map(str::to_string)
        .collect();
    candidates.push("xdg-open".into());
    for command in candidates {
        let mut words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
        if words.is_empty() {
            continue;
        }
        if words.iter().any(|w| w.contains("%s")) {
            words.iter_mut().for_each(|w| *w = w.replace("%s", url));
        } else {
            words.push(url.to_string());
        }
        // Detached from our stdio: a browser that lives on must not hold
        // the output of whoever runs us.
        let spawned = std::process::Command::new(&words[0])
            .args(&words[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = spawned {
            // Reap it in the background; its exit status says nothing.
            std::thread::spawn(move || child.wait());
            return;
        }
    }
}

/// The loopback listener the authorization server redirects the browser to
/// (RFC 8252 7.3): `http://127.0.0.1:PORT/callback`, any free port.
struct Callback {
    listener: tokio::net::TcpListener,
    port: u16,
}

impl Callback {
    async fn bind() -> Result<Callback, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen for the authorization redirect: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        Ok(Callback { listener, port })
    }

    fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}/callback", self.port)
    }

    /// The code and state the browser brings back (or, printing only, the
    /// redirected address pasted on stdin), within `timeout`. Redirects that
    /// do not carry `state` are not ours and are ignored.
    async fn wait(self, browser: Browser, state: &str, timeout: Duration) -> Result<AuthorizationCallback, String> {
        let base = format!("http://127.0.0.1:{}", self.port);
        let (found, mut results) = tokio::sync::mpsc::unbounded_channel();
        let ours = |outcome: &Result<AuthorizationCallback, String>| match outcome {
            Ok(callback) => callback.csrf_token == state,
            // A refusal names no state we can trust; take it only if it has ours.
            Err(_) => true,
        };
        if browser == Browser::Print {
            // A thread, not tokio's stdin: a pending tokio read would hold the
            // runtime's shutdown until Enter is pressed.
            let found = found.clone();
            let base = base.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                    match parse_redirect(line.trim(), &base) {
                        Some(outcome) => {
                            if found.send(outcome).is_err() {
                                return;
                            }
                        }
                        None => eprintln!("that is not the address with `code=` and `state=`; paste it again"),
                    }
                    line.clear();
                }
            });
        }
        let listen = async {
            loop {
                match self.listener.accept().await {
                    // Each connection on its own: an idle or slow one (a
                    // browser's preconnect) must not hold up the redirect.
                    Ok((stream, _)) => {
                        let found = found.clone();
                        let base = base.clone();
                        tokio::spawn(async move {
                            if let Some(outcome) = answer(stream, &base).await {
                                let _ = found.send(outcome);
                            }
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        let receive = async {
            while let Some(outcome) = results.recv().await {
                if ours(&outcome) {
                    return outcome;
                }
            }
            Err("the authorization listener stopped".to_string())
        };
        tokio::select! {
            outcome = receive => outcome,
            () = listen => Err("the authorization listener stopped".to_string()),
            () = tokio::time::sleep(timeout) => Err(format!(
                "no authorization came back within {}",
                crate::config::duration::format(timeout)
            )),
        }
    }
}

/// What a redirect to the listener says: the code and state, or the
/// authorization server's refusal.
fn parse_redirect(target: &str, base: &str) -> Option<Result<AuthorizationCallback, String>> {
    let url = if target.starts_with('/') {
        format!("{base}{target}")
    } else {
        target.to_string()
    };
    let parsed = reqwest::Url::parse(&url).ok()?;
    if parsed.path() != "/callback" {
        return None;
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if let Some(error) = get("error") {
        let detail = get("error_description").map(|d| format!(": {d}")).unwrap_or_default();
        return Some(Err(format!("the authorization server refused: {error}{detail}")));
    }
    Some(AuthorizationCallback::from_redirect_url(&url).map_err(|e| describe(&e)))
}

/// Answers one connection to the listener; `Some` when it was the redirect.
async fn answer(mut stream: tokio::net::TcpStream, base: &str) -> Option<Result<AuthorizationCallback, String>> {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut read = 0;
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer[read..]))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        read += n;
        if let Some(end) = buffer[..read].windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if read == buffer.len() {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let target = head.lines().next()?.split_whitespace().nth(1)?.to_string();
    let outcome = parse_redirect(&target, base);
    let (status, body) = match &outcome {
        Some(Ok(_)) => (
            "200 OK",
            "Authorized. You can close this window and return to the terminal.",
        ),
        Some(Err(_)) => ("400 Bad Request", "Authorization failed; the terminal says why."),
        None => ("404 Not Found", "Not found."),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    outcome
}

/// Where the servers' tokens live: `STATE_DIR/oauth`.
pub fn tokens_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("oauth")
}

/// What a server's token file holds: rmcp's stored credentials, what is
/// needed to refresh them after a restart (the redirect URI and a client
/// secret the server issued), and why a login is needed when one is.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<StoredCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redirect_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    needs_login: Option<String>,
}

/// A server's tokens in `TOKENS_DIR/SERVER.json`, readable by the owner
/// only (0600, written whole and renamed into place), so they survive
/// restarts of the service and are shared with `mcp-manager login`.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(tokens_dir: &Path, server: &str) -> FileStore {
        FileStore {
            path: tokens_dir.join(format!("{server}.json")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<TokenFile, String> {
        match std::fs::read(&self.path) {
            // The error's position only: its text can quote a value.
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is not a token file (line {}, column {}); log in again",
                    self.path.display(),
                    e.line(),
                    e.column()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    fn write(&self, file: &TokenFile) -> Result<(), String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        // A name no other writer (thread or process) uses, created anew so
        // that its mode is ours.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = self.path.with_extension(format!("json.{}.{n}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            format!("cannot write {}: {e}", self.path.display())
        })
    }

    fn update(&self, change: impl FnOnce(&mut TokenFile)) -> Result<(), String> {
        let mut file = self.read()?;
        change(&mut file);
        self.write(&file)
    }

    /// Remembers how the client was registered, for refreshes after a restart.
    pub fn save_client(&self, redirect_uri: &str, client_secret: Option<&str>) -> Result<(), String> {
        self.update(|file| {
            file.redirect_uri = Some(redirect_uri.to_string());
            file.client_secret = client_secret.map(str::to_string);
            file.needs_login = None;
        })
    }

    /// Whether there are tokens (not only why a login is needed).
    pub fn has_credentials(&self) -> bool {
        self.read()
            .is_ok_and(|f| f.credentials.is_some_and(|c| c.token_response.is_some()))
    }

    /// Holds off every other refresh of these tokens, in this process and in
    /// others (`login`, a second service), until dropped: two refreshes with
    /// one refresh token would have the server refuse the second.
    async fn lock(&self) -> Result<(tokio::sync::OwnedMutexGuard<()>, std::fs::File), String> {
        static LOCKS: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
        > = std::sync::LazyLock::new(Default::default);
        let local = {
            // Poisoned only if a holder panicked while inserting: the map is fine.
            let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(self.path.clone()).or_default().clone()
        };
        let local = local.lock_owned().await;
        let path = self.path.with_extension("lock");
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            use std::os::unix::fs::OpenOptionsExt as _;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            // SAFETY: flock on a descriptor this function owns; released when
            // the file is closed (the guard is dropped).
            if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(file)
        });
        let file = tokio::time::timeout(Duration::from_secs(60), file)
            .await
            .map_err(|_| format!("{} stayed locked for a minute", self.path.display()))?
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot lock {}: {e}", self.path.display()))?;
        Ok((local, file))
    }

    /// Forgets the tokens (`mcp-manager logout`); whether there were any.
    pub fn forget(&self) -> Result<bool, String> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot remove {}: {e}", self.path.display())),
        }
    }
}

#[async_trait::async_trait]
impl CredentialStore for FileStore {
    async fn load(&self) -> Result<Option<StoredCredentials>, AuthError> {
        self.read()
            .map(|file| file.credentials)
            .map_err(AuthError::CredentialStoreError)
    }

    async fn save(&self, credentials: StoredCredentials) -> Result<(), AuthError> {
        self.update(|file| {
            file.credentials = Some(credentials);
            file.needs_login = None;
        })
        .map_err(AuthError::CredentialStoreError)
    }

    async fn clear(&self) -> Result<(), AuthError> {
        self.update(|file| file.credentials = None)
            .map_err(AuthError::CredentialStoreError)
    }

    async fn on_refresh_token_rejected(&self, rejected: &StoredCredentials) -> Result<(), AuthError> {
        // The tokens are dead: keep why, so the server shows it until the
        // next login instead of trying them again. Unless they were replaced
        // meanwhile (a login, another refresh): those stay.
        let refresh = |c: &StoredCredentials| {
            serde_json::to_value(&c.token_response)
                .ok()
                .map(|t| t["refresh_token"].clone())
        };
        let refused = refresh(rejected);
        self.update(|file| {
            if file.credentials.as_ref().map(refresh) == Some(refused) {
                file.credentials = None;
                file.needs_login = Some("the authorization server refused the refresh token".into());
            }
        })
        .map_err(AuthError::CredentialStoreError)
    }

    async fn acquire_refresh_guard(&self) -> Result<Option<CredentialRefreshGuard>, AuthError> {
        let guard = self.lock().await.map_err(AuthError::CredentialStoreError)?;
        Ok(Some(CredentialRefreshGuard::new(guard)))
    }
}

/// Why the service could not get a server's tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenError {
    /// Nobody logged in, or the login is dead: waits for `login`.
    NeedsLogin(String),
    /// The authorization server or the file failed this time: retried.
    Transient(String),
}

impl TokenError {
    fn from_auth(e: &AuthError) -> TokenError {
        match e {
            AuthError::AuthorizationRequired | AuthError::TokenRefreshRejected(_) => {
                TokenError::NeedsLogin(describe(e))
            }
            _ => TokenError::Transient(describe(e)),
        }
    }
}

/// The OAuth manager the service connects a server with: its stored
/// tokens (refreshed as they expire), or a client_credentials grant.
pub async fn stored_manager(
    endpoint: &str,
    settings: &crate::config::spec::AuthSettings,
    store: FileStore,
) -> Result<AuthorizationManager, TokenError> {
    if settings.grant == crate::config::spec::Grant::ClientCredentials {
        let mut authorizer = Authorizer::new(endpoint, identity(settings), Browser::Print).with_store(store.clone());
        let renewer = authorizer.authorize(None).await.map_err(TokenError::Transient)?;
        let config = authorizer.client_credentials_config().map_err(TokenError::Transient)?;
        let mut manager = manager_for(endpoint).await.map_err(|e| TokenError::from_auth(&e))?;
        manager.set_credential_store(Renewing {
            store,
            renewer: Arc::new(tokio::sync::Mutex::new(renewer)),
            config,
        });
        return Ok(manager);
    }
    let file = store.read().map_err(TokenError::NeedsLogin)?;
    if file.credentials.as_ref().is_none_or(|c| c.token_response.is_none()) {
        return Err(TokenError::NeedsLogin(
            file.needs_login.unwrap_or_else(|| "not logged in".into()),
        ));
    }
    let mut manager = manager_for(endpoint).await.map_err(|e| TokenError::from_auth(&e))?;
    manager.set_credential_store(store);
    match manager.initialize_from_store().await {
        Ok(true) => {}
        Ok(false) => {
            return Err(TokenError::NeedsLogin(
                "the stored login is for another authorization server".into(),
            ));
        }
        Err(e) => return Err(TokenError::from_auth(&e)),
    }
    // rmcp restores the client id only: give back the redirect URI and the
    // secret that refreshes need (the config's for a pre-registered client,
    // else the one registration issued).
    if let (Some(credentials), Some(redirect)) = (&file.credentials, &file.redirect_uri) {
        let config = OAuthClientConfig::new(credentials.client_id.clone(), redirect.clone());
        let config = match settings.client_secret.clone().or(file.client_secret) {
            Some(secret) => config.with_client_secret(secret),
            None => config,
        };
        manager
            .configure_client(config)
            .map_err(|e| TokenError::Transient(describe(&e)))?;
    }
    Ok(manager)
}

/// The tokens of a client_credentials grant, fetched again shortly before
/// they expire: such grants come without a refresh token, and rmcp renews
/// tokens only with one. The requests of the session wait for the new token
/// instead of failing.
struct Renewing {
    store: FileStore,
    /// The manager that made the first exchange (metadata and client set up).
    renewer: Arc<tokio::sync::Mutex<AuthorizationManager>>,
    config: ClientCredentialsConfig,
}

/// Whether a token is as close to its expiry as rmcp refreshes at.
fn expiring(credentials: &StoredCredentials) -> bool {
    let token = serde_json::to_value(&credentials.token_response).unwrap_or_default();
    let (Some(lifetime), Some(received)) = (token["expires_in"].as_u64(), credentials.token_received_at) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let remaining = lifetime.saturating_sub(now.saturating_sub(received));
    remaining < 30u64.min(lifetime / 2).max(1)
}

#[async_trait::async_trait]
impl CredentialStore for Renewing {
    async fn load(&self) -> Result<Option<StoredCredentials>, AuthError> {
        let current = self.store.load().await?;
        if !current.as_ref().is_some_and(expiring) {
            return Ok(current);
        }
        let renewer = self.renewer.lock().await;
        // Renewed by the request that held the lock before us?
        let current = self.store.load().await?;
        if !current.as_ref().is_some_and(expiring) {
            return Ok(current);
        }
        renewer.exchange_client_credentials(&self.config).await?;
        self.store.load().await
    }

    async fn save(&self, credentials: StoredCredentials) -> Result<(), AuthError> {
        self.store.save(credentials).await
    }

    async fn clear(&self) -> Result<(), AuthError> {
        self.store.clear().await
    }
}

/// The client identity a server's `auth:` settings describe.
pub fn identity(settings: &crate::config::spec::AuthSettings) -> ClientIdentity {
    ClientIdentity {
        client_id: settings.client_id.clone(),
        client_secret: settings.client_secret.clone(),
        client_metadata_url: settings.client_metadata_url.clone(),
        scopes: settings.scopes.clone(),
        client_credentials: settings.grant == crate::config::spec::Grant::ClientCredentials,
    }
}

/// A streamable HTTP client whose requests carry the tokens of its
/// manager: rmcp's [`AuthClient`] adds them, refreshes them before they
/// expire and once on a 401. Its `auth_manager` is shared, so a new
/// authorization can replace the manager under a live session.
pub type OAuthClient = AuthClient<reqwest::Client>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_name_their_scope() {
        assert_eq!(
            challenge_scope(
                r#"Bearer error="insufficient_scope", scope="mcp:write files:read", resource_metadata="x""#
            ),
            Some("mcp:write files:read")
        );
        assert_eq!(challenge_scope("Bearer scope=read, realm=x"), Some("read"));
        assert_eq!(
            challenge_scope(r#"Bearer resource_metadata="https://h/.well-known/x?scope=1""#),
            None
        );
        assert_eq!(
            challenge_scope(r#"Bearer resource_metadata="https://h/x scope=1", scope="files""#),
            Some("files")
        );
        assert_eq!(challenge_scope("Bearer"), None);
    }

    fn credentials(refresh: &str) -> StoredCredentials {
        let token = serde_json::json!({"access_token": "a", "token_type": "Bearer", "refresh_token": refresh});
        StoredCredentials::new(
            "client".into(),
            Some(serde_json::from_value(token).unwrap()),
            vec![],
            Some(1),
        )
    }

    #[tokio::test]
    async fn the_token_file_is_private_and_a_refused_refresh_forgets_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(&dir.path().join("oauth"), "srv");
        assert!(!store.has_credentials());
        store.save(credentials("r1")).await.unwrap();
        store
            .save_client("http://127.0.0.1:1/callback", Some("issued"))
            .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(store.path()).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.has_credentials());
        // Refused, but already replaced by newer tokens: those stay.
        store.on_refresh_token_rejected(&credentials("r0")).await.unwrap();
        assert!(store.has_credentials());
        // Refused and current: gone, with the reason kept for the next start.
        store.on_refresh_token_rejected(&credentials("r1")).await.unwrap();
        assert!(!store.has_credentials());
        let file = store.read().unwrap();
        assert!(file.needs_login.unwrap().contains("refused the refresh token"));
        assert_eq!(file.redirect_uri.as_deref(), Some("http://127.0.0.1:1/callback"));
        // A new login clears the reason.
        store.save(credentials("r2")).await.unwrap();
        assert!(store.read().unwrap().needs_login.is_none());
        // One refresh at a time: a second guard waits for the first.
        let first = store.acquire_refresh_guard().await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(200), store.acquire_refresh_guard()).await;
        assert!(second.is_err(), "the second refresh waits");
        drop(first);
        assert!(store.acquire_refresh_guard().await.unwrap().is_some());
        assert!(store.forget().unwrap());
        assert!(!store.forget().unwrap());
    }

    #[test]
    fn redirects_give_the_code_or_the_refusal() {
        let base = "http://127.0.0.1:1";
        let ok = parse_redirect("/callback?code=abc&state=xyz&iss=http%3A%2F%2Fas", base)
            .expect("the callback")
            .expect("a code");
        assert_eq!((ok.code.as_str(), ok.csrf_token.as_str()), ("abc", "xyz"));
        assert_eq!(ok.issuer.as_deref(), Some("http://as"));
        let refused =
            parse_redirect("/callback?error=access_denied&error_description=no&state=x", base).expect("the callback");
        assert_eq!(
            refused.err().as_deref(),
            Some("the authorization server refused: access_denied: no")
        );
        assert!(parse_redirect("/favicon.ico", base).is_none());
        // Pasted whole, from a browser on another machine.
        assert!(matches!(
            parse_redirect("http://127.0.0.1:9/callback?code=a&state=b", base),
            Some(Ok(_))
        ));
    }
}
