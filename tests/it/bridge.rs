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

/// Waits until the bridge on `port` is ready: `/healthz` says its server runs.
fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(port) {
        assert!(Instant::now() < deadline, "the bridge on {port} never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
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
        Bridge::start_on("127.0.0.1", args, command)
    }

    fn start_on(host: &str, args: &[&str], command: &[&str]) -> Bridge {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["bridge", "--listen", &format!("{host}:{port}")])
            .args(args)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_ready(port);
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

/// The status of a raw `initialize` POST to `url` with these headers.
fn initialize_status(url: &str, headers: &str) -> String {
    use std::io::{Read as _, Write as _};
    let address = url.trim_start_matches("http://").trim_end_matches("/mcp");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    write!(
        stream,
        "POST /mcp HTTP/1.1\r\n{headers}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_bridge_on_every_address_takes_any_host_but_no_web_page() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_string_lossy().to_string();
    let bridge = Bridge::start_on("0.0.0.0", &[], &[BIN, "task-runner", "--base-dir", &base]);
    // A Service's DNS name, as a pod is reached.
    let status = initialize_status(&bridge.url, "Host: tasks.mcp.svc.cluster.local:8080\r\n");
    assert!(status.contains(" 200"), "{status}");
    // A browser page (it sends Origin) of another machine is refused, even
    // one that rebound its name to this address.
    let status = initialize_status(
        &bridge.url,
        "Host: tasks.mcp.svc:8080\r\nOrigin: http://tasks.mcp.svc:8080\r\n",
    );
    assert!(status.contains(" 403"), "{status}");
    // A page of this machine is not (the conformance suite checks that).
    let port = bridge
        .url
        .trim_end_matches("/mcp")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let local = format!("Host: localhost:{port}\r\nOrigin: http://localhost:{port}\r\n");
    let status = initialize_status(&bridge.url, &local);
    assert!(status.contains(" 200"), "{status}");
}

#[test]
fn a_bridged_server_runs_where_the_bridge_was_started_with_its_words_as_given() {
    // `pwd` and a literal `$HOME` through a stdio server that says them: the
    // counter fixture, run by a shell line that prints them to stderr first.
    let dir = tempfile::tempdir().unwrap();
    let counter = crate::support::fixture("servers/counter.py");
    let script = format!(
        "pwd > where.txt; printf '%s' \"$1\" > word.txt; exec python3 {}",
        counter.display()
    );
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "bridge",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--",
            "sh",
            "-c",
            &script,
            "sh",
            "$HOME",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port);
    let _ = child.kill();
    let _ = child.wait();
    let pwd = std::fs::read_to_string(dir.path().join("where.txt")).unwrap();
    assert_eq!(
        std::fs::canonicalize(pwd.trim()).unwrap(),
        std::fs::canonicalize(dir.path()).unwrap()
    );
    assert_eq!(std::fs::read_to_string(dir.path().join("word.txt")).unwrap(), "$HOME");
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

/// The children of `pid` and their states (`/proc/*/stat`).
fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(end) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            let child = entry.file_name().to_string_lossy().parse().unwrap_or(0);
            out.push((child, fields[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// A bridge that is PID 1 (a pod's entrypoint, here in a PID namespace of its
/// own) acts as init: an orphan its server leaves behind is reaped, not kept
/// as a zombie for ever, and SIGTERM reaches the bridge, which stops cleanly.
#[test]
fn a_bridge_as_pid_1_reaps_orphans_and_passes_signals_on() {
    // As root a PID namespace is enough; otherwise with a user namespace too.
    let works = |flags: &[&str]| {
        Command::new("unshare")
            .args(flags)
            .arg("true")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let root: &[&str] = &["--pid", "--fork", "--mount-proc"];
    let user: &[&str] = &["--user", "--map-root-user", "--pid", "--fork", "--mount-proc"];
    let Some(flags) = [root, user].into_iter().find(|f| works(f)) else {
        eprintln!("skipping a_bridge_as_pid_1_reaps_orphans_and_passes_signals_on: cannot make a PID namespace here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The server's shell leaves an orphan (`sleep`) that ends soon after.
    let server = format!(
        "(sleep 0.2 &); exec '{BIN}' task-runner --base-dir '{}'",
        dir.path().display()
    );
    let mut unshare = Command::new("unshare")
        .args(flags)
        .args([BIN, "bridge", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--", "sh", "-c", &server])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(port);
    let init = children(unshare.id())
        .first()
        .map(|(pid, _)| *pid)
        .expect("unshare's child: PID 1 of the namespace");
    // If an assertion fails, the namespace goes with the test: the kernel ends
    // every process in it when its PID 1 is killed.
    struct KillNamespace(u32);
    impl Drop for KillNamespace {
        fn drop(&mut self) {
            // SAFETY: a signal to the namespace's init, a process this test started.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _namespace = KillNamespace(init);
    // Long after the orphan ended (a wait, not a timing assertion).
    std::thread::sleep(Duration::from_secs(1));
    let kids = children(init);
    assert!(
        kids.iter().all(|(_, state)| *state != 'Z'),
        "zombies under PID 1: {kids:?}"
    );
    assert_eq!(kids.len(), 1, "PID 1 has just the bridge under it: {kids:?}");
    // SAFETY: a signal to the namespace's init, a process this test started.
    unsafe { libc::kill(init as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = unshare.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM to PID 1 did not stop the bridge");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the bridge stops cleanly on SIGTERM: {status:?}");
    std::mem::forget(_namespace); // It has ended; its pid may be reused.
}
