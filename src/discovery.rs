//! Walking `config_directories` for config sources (DESIGN 3.1). This is the IO edge
//! of config loading: it finds and reads files, then hands them to the pure
//! [`config::load`].

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::manager::DiscoverySettings;
use crate::config::{self, Diagnostic, Environment, Limits, LoadOutcome, Pos, Severity, SourceFile, SourceKind};

/// Folders never entered.
pub const SKIPPED_DIRS: &[&str] = &[".git", "node_modules", "target", ".venv", "venv", "__pycache__"];

/// How far and where to look.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub max_depth: usize,
    /// Further folder names to skip.
    pub exclude: Vec<String>,
    /// Files larger than this are not read (an error names the limit).
    pub max_file_size: u64,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            max_depth: 8,
            exclude: Vec::new(),
            max_file_size: Limits::default().max_file_size,
        }
    }
}

impl WalkOptions {
    fn new(discovery: &DiscoverySettings, limits: &Limits) -> Self {
        WalkOptions {
            max_depth: discovery.max_depth,
            exclude: discovery.exclude.clone(),
            max_file_size: limits.capped().max_file_size,
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
                Some(kind) => read(&path, kind, options, &mut found, &mut seen),
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
            read(&path, kind, options, found, seen);
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

fn read(path: &Path, kind: SourceKind, options: &WalkOptions, found: &mut Found, seen: &mut BTreeSet<PathBuf>) {
    if !seen.insert(path.to_path_buf()) {
        return;
    }
    match read_capped(path, options.max_file_size) {
        Ok(bytes) => match decode(path, bytes) {
            Ok(text) => found.files.push(SourceFile {
                path: path.to_path_buf(),
                kind,
                text,
            }),
            Err(d) => found.diagnostics.push(*d),
        },
        Err(ReadError::TooLarge(size)) => found.diagnostics.push(problem(
            path,
            format!(
                "the file is {}, over the limit of {} for a config file (manager.limits.max_file_size)",
                size_text(size),
                size_text(options.max_file_size)
            ),
        )),
        Err(ReadError::Io(e)) => found
            .diagnostics
            .push(problem(path, format!("cannot read file: {}", io_reason(&e)))),
    }
}

enum ReadError {
    TooLarge(u64),
    Io(std::io::Error),
}

/// Reads at most `limit` bytes: a file that is (or grows) larger is refused
/// without being read whole, and so is a device that never ends.
fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    // A FIFO or device named like a config file would block or never end.
    let meta = fs::metadata(path).map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::Io(std::io::Error::other("not a regular file")));
    }
    let file = fs::File::open(path).map_err(ReadError::Io)?;
    let size = file.metadata().map_err(ReadError::Io)?.len();
    if size > limit {
        return Err(ReadError::TooLarge(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

/// UTF-8 text, or an error at the line and column of the first invalid byte.
pub fn decode(path: &Path, bytes: Vec<u8>) -> Result<String, Box<Diagnostic>> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => {
            let bytes = e.as_bytes();
            let valid = e.utf8_error().valid_up_to();
            // The prefix before the bad byte is valid UTF-8 by definition.
            let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            let index = config::located::LineIndex::new(before);
            let pos = index.pos(valid);
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line_end = bytes[valid..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| valid + i);
            let line = String::from_utf8_lossy(&bytes[line_start..line_end]);
            Err(Box::new(Diagnostic::with_line(
                Severity::Error,
                path,
                pos,
                format!(
                    "the file is not valid UTF-8: byte 0x{:02x} at offset {valid} cannot start or continue a character",
                    bytes[valid]
                ),
                Some(&line),
            )))
        }
    }
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / f64::from(1 << 10))
    } else {
        format!("{bytes} bytes")
    }
}

/// The folders and files to scan: `--config` paths, and `discovery.config_directories`.
pub fn roots(paths: &[PathBuf], discovery: &DiscoverySettings) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = paths
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    if discovery.auto_discovery {
        for dir in &discovery.config_directories {
            let dir = PathBuf::from(config::manager::expand_home(dir));
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            if !roots.contains(&dir) {
                roots.push(dir);
            }
        }
    }
    roots
}

/// Finds, reads and loads the config under `paths`.
///
/// Discovery settings and limits live in the config itself (`manager.discovery`,
/// `manager.limits`), so when they differ from the defaults the sources are found
/// and loaded once more with them. With `auto_discovery: false` no folder is
/// scanned then: only the files named in `paths` and the file holding the
/// settings are read.
pub fn load_config(paths: &[PathBuf], env: &Environment<'_>) -> LoadOutcome {
    let defaults = Limits::default();
    let mut found = find_sources(paths, &WalkOptions::default());
    let mut outcome = config::load_with(&found.files, env, &defaults);
    let manager = outcome.desired.manager.clone();
    let discovery = &manager.discovery;
    let default_discovery = DiscoverySettings::default();
    let rescan = discovery.max_depth != default_discovery.max_depth
        || !discovery.exclude.is_empty()
        || manager.limits != defaults
        || !discovery.auto_discovery
        || !discovery.config_directories.is_empty();
    if rescan {
        let options = WalkOptions::new(discovery, &manager.limits);
        found = if discovery.auto_discovery {
            // A configured folder that does not exist (yet) is not an error: the
            // original tool's example lists `~/.mcp`, which many machines lack.
            let explicit: Vec<PathBuf> = paths
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .collect();
            let (present, missing): (Vec<PathBuf>, Vec<PathBuf>) = roots(paths, discovery)
                .into_iter()
                .partition(|p| explicit.contains(p) || p.exists());
            let mut found = find_sources(&present, &options);
            for dir in missing {
                found.diagnostics.push(Diagnostic::new(
                    Severity::Warning,
                    &dir,
                    Pos::default(),
                    "discovery.config_directories: this folder does not exist; nothing is read from it until it does",
                    None,
                ));
            }
            found
        } else {
            let mut explicit: Vec<PathBuf> = paths.iter().filter(|p| !p.is_dir()).cloned().collect();
            if let Some(file) = &outcome.manager_file
                && !explicit
                    .iter()
                    .any(|p| std::path::absolute(p).is_ok_and(|p| &p == file))
            {
                explicit.push(file.clone());
            }
            find_sources(&explicit, &options)
        };
        outcome = config::load_with(&found.files, env, &manager.limits);
    }
    for d in found.diagnostics.iter().filter(|d| d.is_error()) {
        outcome.invalid_files.insert(d.file.clone());
    }
    outcome.diagnostics.splice(0..0, found.diagnostics);
    outcome
}
