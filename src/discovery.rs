//! Walking `config_directories` for config sources (DESIGN 3.1). This is the IO edge
//! of config loading: it finds and reads files, then hands them to the pure
//! [`config::load`].

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{self, Diagnostic, Environment, LoadOutcome, Pos, Severity, SourceFile, SourceKind};

/// Folders never entered.
pub const SKIPPED_DIRS: &[&str] = &[".git", "node_modules", "target", ".venv", "venv", "__pycache__"];

/// How far and where to look.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub max_depth: usize,
    /// Further folder names to skip.
    pub exclude: Vec<String>,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            max_depth: 8,
            exclude: Vec::new(),
        }
    }
}

/// The files found, and problems reading them.
#[derive(Debug, Default)]
pub struct Found {
    pub files: Vec<SourceFile>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Finds and reads every config source under `paths` (files or folders).
pub fn find_sources(paths: &[PathBuf], options: &WalkOptions) -> Found {
    let mut found = Found::default();
    let mut seen = BTreeSet::new();
    for path in paths {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        match fs::metadata(&path) {
            Err(e) => found
                .diagnostics
                .push(problem(&path, format!("cannot read config path: {}", io_reason(&e)))),
            Ok(meta) if meta.is_dir() => walk(&path, 0, options, &mut found, &mut seen),
            Ok(_) => match SourceKind::classify(&path, true) {
                Some(kind) => read(&path, kind, &mut found, &mut seen),
                None => found.diagnostics.push(problem(
                    &path,
                    "not a config file mcp-manager knows (expected .mcp.json, *.yaml, pyproject.toml or package.json)",
                )),
            },
        }
    }
    found
}

fn problem(path: &Path, message: impl Into<String>) -> Diagnostic {
    Diagnostic::new(Severity::Error, path, Pos::default(), message, None)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string().to_lowercase(),
    }
}

fn walk(dir: &Path, depth: usize, options: &WalkOptions, found: &mut Found, seen: &mut BTreeSet<PathBuf>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            found
                .diagnostics
                .push(problem(dir, format!("cannot list folder: {}", io_reason(&e))));
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    let is_scripts_mcp = dir.file_name().is_some_and(|n| n == "mcp")
        && dir.parent().and_then(Path::file_name).is_some_and(|n| n == "scripts");
    for entry in entries {
        let path = entry.path();
        // `file_type` does not follow symlinks: linked folders are not entered (no loops).
        let Ok(file_type) = entry.file_type() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if file_type.is_dir() {
            if depth < options.max_depth && !SKIPPED_DIRS.contains(&name.as_str()) && !options.exclude.contains(&name) {
                walk(&path, depth + 1, options, found, seen);
            }
            continue;
        }
        if let Some(kind) = SourceKind::classify(&path, false) {
            read(&path, kind, found, seen);
        } else if is_scripts_mcp && is_executable(&path) && seen.insert(path.clone()) {
            found.files.push(SourceFile {
                path,
                kind: SourceKind::Script,
                text: String::new(),
            });
        }
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn read(path: &Path, kind: SourceKind, found: &mut Found, seen: &mut BTreeSet<PathBuf>) {
    if !seen.insert(path.to_path_buf()) {
        return;
    }
    match fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => found.files.push(SourceFile {
                path: path.to_path_buf(),
                kind,
                text,
            }),
            Err(_) => found.diagnostics.push(problem(path, "the file is not valid UTF-8")),
        },
        Err(e) => found
            .diagnostics
            .push(problem(path, format!("cannot read file: {}", io_reason(&e)))),
    }
}

/// Finds, reads and loads the config under `paths`.
///
/// Discovery settings live in the config itself (`manager.discovery`), so when they
/// differ from the defaults the tree is walked once more with them.
pub fn load_config(paths: &[PathBuf], env: &Environment<'_>) -> LoadOutcome {
    let defaults = WalkOptions::default();
    let mut found = find_sources(paths, &defaults);
    let mut outcome = config::load(&found.files, env);
    let discovery = &outcome.desired.manager.discovery;
    if discovery.max_depth != defaults.max_depth || !discovery.exclude.is_empty() {
        let options = WalkOptions {
            max_depth: discovery.max_depth,
            exclude: discovery.exclude.clone(),
        };
        found = find_sources(paths, &options);
        outcome = config::load(&found.files, env);
    }
    for d in &found.diagnostics {
        outcome.invalid_files.insert(d.file.clone());
    }
    outcome.diagnostics.splice(0..0, found.diagnostics);
    outcome
}
