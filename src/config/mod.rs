//! Config loading: source files in, a validated [`DesiredState`] and every problem out.
//!
//! The pipeline for each file: parse into a located tree ([`located`]), expand
//! `${VAR}`s ([`env`]), validate against the JSON Schema ([`schema`]), normalize and
//! check semantics ([`spec`]); then merge all files, rejecting duplicate names.
//! [`load`] is pure: it takes file contents and an environment lookup, so it is
//! tested with plain values. Reading the files is [`crate::discovery`]'s job.

pub mod diagnostic;
pub mod duration;
pub mod env;
pub mod json;
pub mod located;
pub mod manager;
pub mod schema;
pub mod sources;
pub mod spec;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use diagnostic::{Diagnostic, Severity, Snippet};
pub use located::Pos;
pub use manager::{Limits, ManagerSettings};
pub use spec::{ConnectionType, ProtocolSetting, ServerSpec};

/// The kinds of file servers are declared in (DESIGN 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `.mcp.json`, `*.mcp.json`, `.cursor/mcp.json`, `claude_desktop_config.json`.
    McpJson,
    /// `.vscode/mcp.json`.
    VsCode,
    /// `mcp-manager.yaml`, `mcp-config.yaml`, `mcp-servers.yaml` (or `.yml`).
    Yaml,
    /// `pyproject.toml`.
    PyProject,
    /// `package.json`.
    PackageJson,
    /// An executable file in `scripts/mcp/`.
    Script,
}

impl SourceKind {
    /// Recognizes a config file by its name and parent folder.
    ///
    /// `explicit` is true for files named on the command line: then any `.yaml`,
    /// `.yml` or `.json` file is accepted by its extension.
    pub fn classify(path: &Path, explicit: bool) -> Option<SourceKind> {
        let name = path.file_name()?.to_str()?;
        let parent = path
            .parent()
            .and_then(Path::file_name)
            .and_then(|p| p.to_str())
            .unwrap_or("");
        Some(match name {
            "mcp.json" if parent == ".vscode" => SourceKind::VsCode,
            "mcp.json" if parent == ".cursor" => SourceKind::McpJson,
            ".mcp.json" | "claude_desktop_config.json" => SourceKind::McpJson,
            n if n.ends_with(".mcp.json") => SourceKind::McpJson,
            "mcp-manager.yaml" | "mcp-manager.yml" | "mcp-config.yaml" | "mcp-config.yml" | "mcp-servers.yaml"
            | "mcp-servers.yml" => SourceKind::Yaml,
            "pyproject.toml" => SourceKind::PyProject,
            "package.json" => SourceKind::PackageJson,
            n if explicit && (n.ends_with(".yaml") || n.ends_with(".yml")) => SourceKind::Yaml,
            n if explicit && n.ends_with(".json") => SourceKind::McpJson,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::McpJson => "mcp.json",
            SourceKind::VsCode => "vscode",
            SourceKind::Yaml => "yaml",
            SourceKind::PyProject => "pyproject",
            SourceKind::PackageJson => "package.json",
            SourceKind::Script => "script",
        }
    }
}

/// A config source as read from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub kind: SourceKind,
    /// The file's text; empty for [`SourceKind::Script`], which is only executed.
    pub text: String,
}

/// Where a server was defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub source: SourceKind,
}

impl Provenance {
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One server the config asks for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredServer {
    pub name: String,
    pub spec: ServerSpec,
    pub provenance: Provenance,
    /// Found by convention (a script, an `mcp` entry point) rather than declared.
    pub inferred: bool,
    /// The spec as the planner compares it (secrets fingerprinted). Derived from
    /// `spec` by [`DesiredServer::new`]; never set separately.
    #[serde(skip)]
    pub view: view::SpecView,
    /// Stable hash of `view`: equal hashes mean equal specs.
    pub spec_hash: String,
}

impl DesiredServer {
    /// Builds a desired server, computing its view and hash once.
    pub fn new(name: String, spec: ServerSpec, provenance: Provenance, inferred: bool, key: &view::SecretKey) -> Self {
        let view = view::spec_view(&spec, key);
        let spec_hash = view::stable_hash(&view);
        DesiredServer {
            name,
            spec,
            provenance,
            inferred,
            view,
            spec_hash,
        }
    }
}

/// What the config files ask for: the planner's first input.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct DesiredState {
    pub servers: BTreeMap<String, DesiredServer>,
    pub manager: ManagerSettings,
}

/// A server that was found but does not take part in the desired state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowedServer {
    pub name: String,
    pub provenance: Provenance,
    /// The definition that wins.
    pub shadowed_by: Provenance,
}

/// Everything [`load`] found.
#[derive(Debug, Clone, Default)]
pub struct LoadOutcome {
    pub desired: DesiredState,
    pub diagnostics: Vec<Diagnostic>,
    /// Inferred servers hidden by an explicit definition of the same name.
    pub shadowed: Vec<ShadowedServer>,
    /// Files with at least one error: the servers they declare are not in `desired`.
    pub invalid_files: BTreeSet<PathBuf>,
    /// Servers left out of `desired` because of errors (in them or in their file).
    pub rejected: Vec<(String, Provenance)>,
    /// A `manager:` section is invalid (or given twice): the whole revision must
    /// be rejected (DESIGN 4.5), not just that file.
    pub manager_invalid: bool,
    /// The file the manager settings came from.
    pub manager_file: Option<PathBuf>,
    /// How many config files were read.
    pub files_read: usize,
}

impl LoadOutcome {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// The environment the loader sees: variable lookup, and the key that secret
/// fingerprints are made with.
pub struct Environment<'a> {
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    pub secret_key: view::SecretKey,
}

impl Environment<'_> {
    /// The process environment, with a key for this process only (for output
    /// that is never compared with the state dir).
    pub fn process() -> Environment<'static> {
        Environment::process_with_key(process_key())
    }

    /// The process environment, fingerprinting with `key` (the state dir's).
    pub fn process_with_key(secret_key: view::SecretKey) -> Environment<'static> {
        fn get(name: &str) -> Option<String> {
            std::env::var(name).ok()
        }
        Environment {
            lookup: &get,
            secret_key,
        }
    }

    /// The process environment for `backend: kubernetes` and `render
    /// kubernetes`: except in a server's `command` and `args`, where no value
    /// of it goes (a pod's command line is in its manifest): there `${VAR}`
    /// becomes `$(VAR)` (or its default), which Kubernetes expands from the
    /// container's env (`kubernetes.env_from_secret`). See [`env::CLUSTER_MARK`].
    pub fn for_cluster(secret_key: view::SecretKey) -> Environment<'static> {
        fn get(name: &str) -> Option<String> {
            let mark = env::CLUSTER_MARK;
            Some(match std::env::var(name) {
                Ok(value) => format!("{mark}{mark}{value}"),
                Err(_) => mark.to_string(),
            })
        }
        Environment {
            lookup: &get,
            secret_key,
        }
    }
}

/// A random fingerprint key made once per process.
pub fn process_key() -> view::SecretKey {
    static KEY: std::sync::OnceLock<view::SecretKey> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        random_key().unwrap_or_else(|e| {
            // Without randomness the key is only as secret as the clock: say so.
            tracing::warn!("cannot read /dev/urandom ({e}); this run's secret fingerprints use a weak key");
            let mut key = [0u8; 32];
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            key[..16].copy_from_slice(&nanos.to_le_bytes());
            key
        })
    })
}

/// 32 random bytes from the kernel.
pub fn random_key() -> std::io::Result<view::SecretKey> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
    Ok(key)
}

/// Loads every source file into a desired state, collecting all problems.
pub fn load(files: &[SourceFile], env: &Environment<'_>) -> LoadOutcome {
    load_with(files, env, &Limits::default())
}

/// [`load`] within the given limits.
pub fn load_with(files: &[SourceFile], env: &Environment<'_>, limits: &Limits) -> LoadOutcome {
    let limits = &limits.capped();
    let mut outcome = LoadOutcome {
        files_read: files.len(),
        ..LoadOutcome::default()
    };
    let mut found: Vec<sources::FoundServer> = Vec::new();
    let mut manager: Option<(ManagerSettings, Provenance)> = None;

    let mut files: Vec<&SourceFile> = files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for file in files {
        let extracted = sources::extract(file, env, limits);
        if extracted.diagnostics.iter().any(Diagnostic::is_error) {
            outcome.invalid_files.insert(file.path.clone());
        }
        outcome.diagnostics.extend(extracted.diagnostics);
        outcome.manager_invalid |= extracted.manager_invalid;
        if let Some((settings, prov)) = extracted.manager {
            match &manager {
                Some((_, first)) => {
                    outcome.manager_invalid = true;
                    outcome.diagnostics.push(Diagnostic::new(
                        Severity::Error,
                        &file.path,
                        Pos::new(prov.line as usize, prov.column as usize),
                        format!(
                            "manager settings are already given at {}; keep one `manager:` section",
                            first.location()
                        ),
                        Some(&file.text),
                    ))
                }
                None => manager = Some((settings, prov)),
            }
        }
        found.extend(extracted.servers);
    }
    outcome.manager_file = manager.as_ref().map(|(_, prov)| prov.file.clone());
    let manager = manager.map(|(m, _)| m).unwrap_or_default();

    // Explicit definitions first, so they shadow inferred ones of the same name.
    found.sort_by_key(|s| s.inferred);
    let mut servers: BTreeMap<String, DesiredServer> = BTreeMap::new();
    let mut explicit_at: BTreeMap<String, Provenance> = BTreeMap::new();
    for server in found {
        if let Some(first) = explicit_at.get(&server.name) {
            if server.inferred {
                outcome.shadowed.push(ShadowedServer {
                    name: server.name,
                    provenance: server.provenance,
                    shadowed_by: first.clone(),
                });
            } else {
                let mut duplicate = Diagnostic::new(
                    Severity::Error,
                    &server.provenance.file,
                    Pos::new(server.provenance.line as usize, server.provenance.column as usize),
                    format!(
                        "server `{}` is defined twice: here and at {}; rename one or remove it",
                        server.name,
                        first.location()
                    ),
                    None,
                );
                duplicate.snippet = server.snippet;
                outcome.diagnostics.push(duplicate);
                outcome.invalid_files.insert(server.provenance.file.clone());
                outcome.invalid_files.insert(first.file.clone());
            }
            continue;
        }
        explicit_at.insert(server.name.clone(), server.provenance.clone());
        let Some(mut spec) = server.spec else {
            outcome.rejected.push((server.name, server.provenance));
            continue;
        };
        if server.inferred {
            spec.enabled = manager.discovery.enable_inferred.enables(&server.name);
        }
        // The manager's global defaults, for servers that do not set their own.
        let given = |field: &str| server.given_fields.iter().any(|f| f == field);
        if let Some(interval) = manager.health_monitoring.global_health_check_interval
            && !given("health_check_interval")
        {
            spec.health_check_interval = interval;
        }
        if let Some(auto) = manager.recovery.global_auto_recovery
            && !given("auto_restart")
        {
            spec.auto_restart = auto;
        }
        servers.insert(
            server.name.clone(),
            DesiredServer::new(server.name, spec, server.provenance, server.inferred, &env.secret_key),
        );
    }
    // A file with errors contributes nothing: its servers keep their last good spec.
    let (kept, dropped): (BTreeMap<_, _>, BTreeMap<_, _>) = servers
        .into_iter()
        .partition(|(_, s)| !outcome.invalid_files.contains(&s.provenance.file));
    outcome
        .rejected
        .extend(dropped.into_values().map(|s| (s.name, s.provenance)));
    outcome.rejected.sort_by(|a, b| a.0.cmp(&b.0));
    let servers = kept;
    outcome
        .diagnostics
        .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    outcome.desired = DesiredState { servers, manager };
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_config_files() {
        let c = |p: &str| SourceKind::classify(Path::new(p), false);
        assert_eq!(c("/r/.mcp.json"), Some(SourceKind::McpJson));
        assert_eq!(c("/r/team.mcp.json"), Some(SourceKind::McpJson));
        assert_eq!(c("/r/.cursor/mcp.json"), Some(SourceKind::McpJson));
        assert_eq!(c("/r/.vscode/mcp.json"), Some(SourceKind::VsCode));
        assert_eq!(c("/r/mcp.json"), None);
        assert_eq!(c("/r/claude_desktop_config.json"), Some(SourceKind::McpJson));
        assert_eq!(c("/r/mcp-servers.yml"), Some(SourceKind::Yaml));
        assert_eq!(c("/r/pyproject.toml"), Some(SourceKind::PyProject));
        assert_eq!(c("/r/package.json"), Some(SourceKind::PackageJson));
        assert_eq!(c("/r/other.yaml"), None);
        assert_eq!(
            SourceKind::classify(Path::new("/r/other.yaml"), true),
            Some(SourceKind::Yaml)
        );
    }
}
