//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};

use mcp_manager::config::{self, DesiredState, Environment, LoadOutcome, SourceFile, SourceKind};

/// Variables the tests' configs may refer to. The secret values must never show up
/// in any output.
pub const SECRET: &str = "s3cr3t-hunter2";
pub const SECRET_2: &str = "0ther-s3cr3t";

pub fn test_env(name: &str) -> Option<String> {
    match name {
        "SECRET_TOKEN" => Some(SECRET.into()),
        "SECRET_TOKEN_2" => Some(SECRET_2.into()),
        "HOME" => Some("/home/tester".into()),
        _ => None,
    }
}

/// Loads one YAML text as if it were `/cfg/mcp-manager.yaml`.
pub fn load_yaml(yaml: &str) -> LoadOutcome {
    let files = [SourceFile {
        path: PathBuf::from("/cfg/mcp-manager.yaml"),
        kind: SourceKind::Yaml,
        text: yaml.to_string(),
    }];
    config::load(
        &files,
        &Environment {
            lookup: &test_env,
            secret_key: [0; 32],
        },
    )
}

/// Loads YAML that must be valid.
pub fn desired(yaml: &str) -> DesiredState {
    let outcome = load_yaml(yaml);
    assert!(
        !outcome.has_errors(),
        "unexpected config errors: {:#?}",
        outcome.diagnostics
    );
    outcome.desired
}

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

/// Rewrites absolute fixture paths so snapshots do not depend on the checkout.
pub fn scrub(text: &str) -> String {
    text.replace(&format!("{}/", fixture("").display()), "")
        .replace(&fixture("").display().to_string(), "<fixtures>")
}

/// reqwest (under rmcp's HTTP client) needs a process-wide rustls provider;
/// mcp-manager uses ring. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Python with the official MCP SDK, installed by `.ci/run` in the venv of
/// `mcp-server-time` (`MCP_SERVER_TIME`).
pub fn python_sdk() -> Option<std::path::PathBuf> {
    std::env::var("MCP_SERVER_TIME")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|t| std::path::Path::new(&t).with_file_name("python"))
        .filter(|p| p.exists())
}
