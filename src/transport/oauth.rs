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
use std::time::Duration;

use rmcp::transport::auth::{AuthorizationCallback, ClientCredentialsConfig, OAuthClientConfig};
use rmcp::transport::{
    AuthClient, AuthError, AuthorizationManager, AuthorizationRequest, AuthorizationSession, CredentialStore,
    StoredCredentials,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `login` waits for the browser to come back with a code.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// At most this many authorizations per request: one for the first
/// challenge, then step-ups for scopes the server asks for (a server that
/// keeps asking for a scope it never grants is given up on).
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
        AuthorizationManager::new(self.endpoint.as_str())
            .await
            .map_err(|e| describe(&e))
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
        open(&url, self.browser);
        let callback = listener.wait(self.browser, LOGIN_TIMEOUT).await?;
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
            let request = request.with_preregistered_client(id);
            return Ok(match &self.identity.client_secret {
                Some(secret) => (request.with_client_secret(secret), Some(secret.clone())),
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

    async fn client_credentials(&mut self, mut manager: AuthorizationManager) -> Result<AuthorizationManager, String> {
        let (Some(client_id), Some(client_secret)) = (&self.identity.client_id, &self.identity.client_secret) else {
            return Err("the client_credentials grant needs `client_id` and `client_secret`".into());
        };
        let config = ClientCredentialsConfig::ClientSecret {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            scopes: self.identity.scopes.clone(),
            resource: Some(self.endpoint.clone()),
        };
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
    /// redirected address pasted on stdin), within `timeout`.
    async fn wait(self, browser: Browser, timeout: Duration) -> Result<AuthorizationCallback, String> {
        let base = format!("http://127.0.0.1:{}", self.port);
        let listen = async {
            loop {
                let Ok((stream, _)) = self.listener.accept().await else {
                    continue;
                };
                if let Some(callback) = answer(stream, &base).await {
                    return callback;
                }
            }
        };
        let pasted = async {
            if browser == Browser::Open {
                return std::future::pending().await;
            }
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin());
            let mut line = String::new();
            loop {
                line.clear();
                match tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line).await {
                    Ok(0) | Err(_) => return std::future::pending().await,
                    Ok(_) => {
                        if let Some(callback) = parse_redirect(line.trim(), &base) {
                            return callback;
                        }
                        eprintln!("that is not the address with `code=` and `state=`; paste it again");
                    }
                }
            }
        };
        let outcome = tokio::select! {
            callback = listen => callback,
            callback = pasted => callback,
            () = tokio::time::sleep(timeout) => {
                return Err(format!(
                    "no authorization came back within {}",
                    crate::config::duration::format(timeout)
                ));
            }
        };
        outcome
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
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a token file ({e}); log in again", self.path.display())),
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
        let temporary = self.path.with_extension(format!("json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
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

    async fn on_refresh_token_rejected(&self, _credentials: &StoredCredentials) -> Result<(), AuthError> {
        // The tokens are dead: keep why, so the server shows it until the
        // next login instead of trying them again.
        self.update(|file| {
            file.credentials = None;
            file.needs_login = Some("the authorization server refused the refresh token".into());
        })
        .map_err(AuthError::CredentialStoreError)
    }
}

/// Why a server cannot be connected to until someone logs in.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedsLogin(pub String);

/// The OAuth manager the service connects a server with: its stored
/// tokens (refreshed as they expire), or a client_credentials grant.
pub async fn stored_manager(
    endpoint: &str,
    settings: &crate::config::spec::AuthSettings,
    store: FileStore,
) -> Result<AuthorizationManager, NeedsLogin> {
    if settings.grant == crate::config::spec::Grant::ClientCredentials {
        let mut authorizer = Authorizer::new(endpoint, identity(settings), Browser::Print).with_store(store);
        return authorizer.authorize(None).await.map_err(NeedsLogin);
    }
    let file = store.read().map_err(NeedsLogin)?;
    if file.credentials.as_ref().is_none_or(|c| c.token_response.is_none()) {
        return Err(NeedsLogin(file.needs_login.unwrap_or_else(|| "not logged in".into())));
    }
    let mut manager = AuthorizationManager::new(endpoint)
        .await
        .map_err(|e| NeedsLogin(describe(&e)))?;
    manager.set_credential_store(store);
    match manager.initialize_from_store().await {
        Ok(true) => {}
        Ok(false) => {
            return Err(NeedsLogin(
                "the stored login is for another authorization server".into(),
            ));
        }
        Err(e) => return Err(NeedsLogin(describe(&e))),
    }
    // rmcp restores the client id only: give back the redirect URI and the
    // secret that refreshes need.
    if let (Some(credentials), Some(redirect)) = (&file.credentials, &file.redirect_uri) {
        let config = OAuthClientConfig::new(credentials.client_id.clone(), redirect.clone());
        let config = match file.client_secret.clone().or_else(|| settings.client_secret.clone()) {
            Some(secret) => config.with_client_secret(secret),
            None => config,
        };
        manager.configure_client(config).map_err(|e| NeedsLogin(describe(&e)))?;
    }
    Ok(manager)
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
