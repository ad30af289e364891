//! Issue 14's proof for `mcp-manager call`: the official MCP client
//! conformance suite (npm `@modelcontextprotocol/conformance` 0.2, `client`
//! command, installed by `.ci/run`) drives `mcp-manager call --url` as the
//! client under test, through `tests/fixtures/clients/conformance_call.py`
//! (which names the tool each scenario wants called, as a user's script
//! would). Every scenario of the 2025-11-25 and 2026-07-28 revisions runs —
//! the `auth/*` ones (discovery, issuer checks, registration, PKCE, resource
//! indicators, scopes and step-up), initialize, tools_call, sse-retry,
//! request-metadata, the `http-*` header scenarios, JSON Schema 2020-12 —
//! and the client_credentials extension. `$BROWSER` is a script that follows
//! the authorization redirect to `call`'s loopback listener, standing in for
//! the person who clicks "allow".
//!
//! The suite fails the run on any failure not listed, with its reason, in
//! `tests/fixtures/clients/conformance_expected_failures.yaml`, and on a
//! listed one that passes.

use std::path::PathBuf;
use std::time::Duration;

use crate::service::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_passes_the_client_conformance_suite() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).map(PathBuf::from);
    let (Some(node), Some(suite)) = (var("MCP_CONFORMANCE_NODE"), var("MCP_CONFORMANCE_02")) else {
        // In CI the suite is installed by .ci/run: its absence is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "MCP_CONFORMANCE_NODE and MCP_CONFORMANCE_02 are not set"
        );
        eprintln!("skipping: the conformance suite is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let browser = dir.path().join("browser.py");
    std::fs::write(
        &browser,
        "#!/usr/bin/env python3\n\
         # Follows the authorization redirect to the loopback listener, as a\n\
         # browser does once the person allows.\n\
         import sys, urllib.request\n\
         urllib.request.urlopen(sys.argv[1], timeout=20).read()\n",
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let driver = crate::support::fixture("clients/conformance_call.py");
    let expected = crate::support::fixture("clients/conformance_expected_failures.yaml");
    let runs: [(&str, &[&str]); 3] = [
        ("2025-11-25", &["--suite", "all", "--spec-version", "2025-11-25"]),
        ("2026-07-28", &["--suite", "all", "--spec-version", "2026-07-28"]),
        ("client_credentials", &["--scenario", "auth/client-credentials-basic"]),
    ];
    let mut failures = Vec::new();
    for (label, args) in runs {
        let out = dir.path().join(label);
        let mut command = tokio::process::Command::new(&node);
        command
            .arg(&suite)
            .arg("client")
            .arg("--command")
            .arg(format!("python3 {}", driver.display()))
            .args(args)
            .arg("--expected-failures")
            .arg(&expected)
            .arg("-o")
            .arg(&out)
            .env("MCP_MANAGER_BIN", BIN)
            .env("BROWSER", &browser)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(300), command.output())
            .await
            .unwrap_or_else(|_| panic!("{label}: the suite did not finish within 5 minutes"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let passed = passed_checks(&out);
        eprintln!("client conformance {label}: {passed} checks passed");
        if !output.status.success() || passed == 0 {
            failures.push(format!(
                "{label}: {}\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// How many checks passed in the `checks.json` files of a run's output
/// folder: a run that checked nothing is no proof.
fn passed_checks(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                return passed_checks(&path);
            }
            if path.file_name().is_none_or(|n| n != "checks.json") {
                return 0;
            }
            let checks: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()).unwrap_or_default();
            checks
                .as_array()
                .map_or(0, |checks| checks.iter().filter(|c| c["status"] == "SUCCESS").count())
        })
        .sum()
}
