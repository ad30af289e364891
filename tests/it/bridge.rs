//! `mcp-manager bridge`: a stdio server served as streamable HTTP, shared or
//! one process per MCP session, reached with `mcp-manager call --url`; a
//! command that cannot start ends the bridge with an error. (The official
//! conformance suite runs through it in `conformance.rs`.)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::service::BIN;

/// A bridge child process, killed when dropped.
pub(crate) struct Bridge {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // SIGTERM: the bridge stops its server cleanly.
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `/healthz` answers 200.
fn ready(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.starts_with("HTTP/1.1 200")
}

impl Bridge {
    pub(crate) fn start(args: &[&str], command: &[&str]) -> Bridge {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["bridge", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Ready when /healthz says so (its server runs).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(port) {
            assert!(Instant::now() < deadline, "the bridge on {port} never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Bridge {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }

    fn call(&self, words: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .args(["call", "--url", &self.url])
            .args(words)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

#[test]
fn bridge_serves_a_stdio_server_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_string_lossy().to_string();
    let bridge = Bridge::start(
        &[],
        &[BIN, "task-runner", "--base-dir", &base, "--executor", "sh -c cat"],
    );
    // Names as the server wrote them; no token needed.
    let (ok, listed) = bridge.call(&[]);
    assert!(
        ok && listed.contains("get_task_summary") && !listed.contains("__"),
        "{listed}"
    );
    let (ok, said) = bridge.call(&["get_task_summary", "{}"]);
    assert!(ok && said.contains("\"total\""), "{said}");
}

#[test]
fn bridge_shares_one_process_or_gives_each_session_its_own() {
    let counter = crate::support::fixture("servers/counter.py");
    let counter = counter.to_string_lossy().to_string();
    let counts = |bridge: &Bridge| -> Vec<String> {
        (0..2)
            .map(|_| {
                // A 2025-11-25 session: per_client is per MCP session.
                let (ok, said) = bridge.call(&["--protocol", "2025-11-25", "count", "{}"]);
                assert!(ok, "{said}");
                said.split_whitespace()
                    .find(|w| w.starts_with("count="))
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let shared = Bridge::start(&[], &["python3", &counter]);
    assert_eq!(counts(&shared), ["count=1", "count=2"], "one process for every session");
    let own = Bridge::start(&["--session", "per_client"], &["python3", &counter]);
    assert_eq!(counts(&own), ["count=1", "count=1"], "a process per session");
}

#[test]
fn a_bridge_whose_command_cannot_start_exits_with_the_reason() {
    let port = free_port();
    let out = Command::new(BIN)
        .args([
            "bridge",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--",
            "/nonexistent/mcp-server",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("/nonexistent/mcp-server") && error.contains("failed"),
        "{error}"
    );
}
