//! Issue 14 with the service: a remote server behind OAuth
//! (`tests/fixtures/servers/oauth_mcp.py`, its own authorization server,
//! access tokens that expire after 3 s). Without a login the server waits in
//! `needs login` with the command to run (no crash loop); `mcp-manager
//! login` (with `$BROWSER` following the redirect) brings it up; calls
//! through the gateway keep working while the tokens expire and are
//! refreshed; a revoked refresh token ends in `needs login` with the reason;
//! and no token value shows up in output, logs, the API, metrics or sled.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::service::{Service, http, running};

/// The fixture, killed when dropped.
struct Fixture {
    child: Child,
    port: u16,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fixture {
    fn start() -> Fixture {
        let mut child = Command::new("python3")
            .arg(crate::support::fixture("servers/oauth_mcp.py"))
            .arg("3")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the OAuth fixture");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .expect("the fixture says its port")
            .parse()
            .unwrap();
        Fixture { child, port }
    }

    fn request(&self, method: &str, path: &str) -> Value {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        use std::io::{Read as _, Write as _};
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    fn stats(&self) -> Value {
        self.request("GET", "/control/stats")
    }
}

/// The service account's secret (as the fixture knows it).
const SECRET: &str = "service-account-secret-value";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `$BROWSER` that follows the authorization redirect to the loopback
/// listener, as a browser does once the person allows.
fn browser(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("browser.py");
    std::fs::write(
        &path,
        "#!/usr/bin/env python3\nimport sys, urllib.request\nurllib.request.urlopen(sys.argv[1], timeout=20).read()\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn wait_for(svc: &Service, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    svc.wait_server("secure", what, check)
}

fn needs_login(server: &Value) -> bool {
    server["phase"] == "failed"
        && server["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("needs login") && e.contains("mcp-manager login secure"))
}

#[test]
fn login_refresh_and_revocation_through_the_service() {
    let fixture = Fixture::start();
    let yaml = format!(
        "servers:\n  secure:\n    url: http://127.0.0.1:{port}/mcp\n    protocol: '2025-11-25'\n    health_check_interval: 1s\n    failure_threshold: 2\n    restart_delay: 200ms\n    max_restart_delay: 1s\n  account:\n    url: http://127.0.0.1:{port}/mcp\n    protocol: '2025-11-25'\n    auth: {{type: oauth, grant: client_credentials, client_id: service-account, client_secret: {SECRET}}}\n",
        port = fixture.port
    );
    let svc = Service::start(&yaml);

    // No `auth` set, no login: the 401 is recognized; the server waits in
    // `needs login` with the command, and is not retried meanwhile.
    let waiting = wait_for(&svc, "needs login", needs_login);
    std::thread::sleep(Duration::from_secs(2));
    let still = svc.server("secure");
    assert!(needs_login(&still), "{still}");
    assert_eq!(
        still["restart_count"], waiting["restart_count"],
        "no crash loop: {still}"
    );

    // Log in: the browser stand-in follows the redirect; the service
    // reconnects with the tokens.
    let tools = tempfile::tempdir().unwrap();
    let out = Command::new(crate::service::BIN)
        .args(["login", "secure"])
        .env("MCP_MANAGER_STATE_DIR", svc.state.path())
        .env("BROWSER", browser(tools.path()))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let login_output = text(&out);
    assert!(out.status.success(), "{login_output}");
    let token_file = svc.state.path().join("oauth").join("secure.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only the owner reads the tokens");
    wait_for(&svc, "running with the tokens", running);

    // The service account needs no login.
    svc.wait_server("account", "running with client_credentials", running);

    // Calls through the gateway across several expiries: none fails, for
    // the logged-in server (refresh tokens) and the service account (new
    // client_credentials grants).
    let mut outputs = vec![login_output];
    let until = Instant::now() + Duration::from_secs(8);
    let mut calls = 0;
    while Instant::now() < until {
        for server in ["secure", "account"] {
            let out = svc.cli(&["call", server, "whoami", "{}"]);
            let said = text(&out);
            assert!(
                out.status.success() && said.contains("an authorized caller"),
                "call {calls} to {server} failed: {said}"
            );
            outputs.push(said);
            calls += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let stats = fixture.stats();
    assert!(
        stats["grants"].as_u64().unwrap() >= 3,
        "client_credentials tokens were renewed: {stats}"
    );
    assert!(
        stats["refreshes"].as_u64().unwrap() >= 2,
        "tokens were refreshed: {stats}"
    );
    assert!(stats["calls"].as_u64().unwrap() >= calls, "{stats}");

    // The tokens survive the service: killed and started again, it
    // connects with them (refreshing the one that expired meanwhile).
    let (config, state) = svc.kill_hard();
    let refreshes = fixture.stats()["refreshes"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let svc = Service::start_in(config, state);
    wait_for(&svc, "running again with the stored tokens", running);
    let out = svc.cli(&["call", "secure", "whoami", "{}"]);
    assert!(out.status.success(), "{}", text(&out));
    outputs.push(text(&out));
    assert!(
        fixture.stats()["refreshes"].as_u64().unwrap() > refreshes,
        "refreshed after the restart"
    );

    // Revoked: once the access token expires, the refresh is refused and
    // the server is back to `needs login`, saying why.
    fixture.request("POST", "/control/revoke");
    let after = wait_for(&svc, "needs login after the refresh token was revoked", |s| {
        needs_login(s)
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused the refresh token"))
    });
    let status = svc.cli(&["status"]);
    outputs.push(text(&status));
    assert!(text(&status).contains("needs login"), "{}", text(&status));

    // No token value (nor authorization code) anywhere but the token file;
    // the service logs at debug level.
    let issued: Vec<String> = fixture.stats()["issued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert!(issued.len() >= 6, "{issued:?}");
    let mut issued = issued;
    issued.push(SECRET.to_string());
    let token = svc.token();
    let mut places: Vec<(String, String)> = outputs.into_iter().map(|o| ("CLI output".to_string(), o)).collect();
    places.push(("the service log".into(), svc.log()));
    places.push(("the server".into(), after.to_string()));
    for path in [
        "/status",
        "/servers",
        "/servers/secure",
        "/observed",
        "/health",
        "/servers/secure/logs",
        "/metrics",
    ] {
        let (_, body) = http(&svc, "GET", &format!("/api/v1{path}"), Some(token.trim()), "");
        places.push((format!("GET /api/v1{path}"), body));
    }
    for file in files(svc.state.path()) {
        if file.starts_with(svc.state.path().join("oauth")) {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        places.push((file.display().to_string(), String::from_utf8_lossy(&bytes).to_string()));
    }
    for (place, content) in &places {
        for value in &issued {
            assert!(!content.contains(value.as_str()), "a token value is in {place}");
        }
    }
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
