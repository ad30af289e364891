//! Extracting server definitions from each kind of source file (DESIGN 3.1).

use std::path::Path;

use serde_json::Value;

use super::diagnostic::{Diagnostic, Severity, Snippet};
use super::env::{self, ExpandContext};
use super::located::{self, Node, NodeKind, Pos};
use super::manager::{Limits, ManagerSettings};
use super::schema::{self, Shape};
use super::spec::{self, NormalizeContext, ServerSpec};
use super::{Environment, Provenance, SourceFile, SourceKind};

/// A server as found in one file, before files are merged.
#[derive(Debug, Clone)]
pub struct FoundServer {
    pub name: String,
    /// `None` when the definition has errors (they are in the diagnostics).
    pub spec: Option<ServerSpec>,
    pub provenance: Provenance,
    pub inferred: bool,
    /// The line the server is defined on, for snippets in later diagnostics.
    pub snippet: Option<Snippet>,
    /// The fields the definition sets itself (the rest may take the manager's
    /// global defaults).
    pub given_fields: Vec<String>,
}

/// What one file contributes.
#[derive(Debug, Default)]
pub struct Extracted {
    pub servers: Vec<FoundServer>,
    pub manager: Option<(ManagerSettings, Provenance)>,
    /// The file has a `manager:` section with errors.
    pub manager_invalid: bool,
    pub diagnostics: Vec<Diagnostic>,
}

/// Server names: a letter or digit, then letters, digits, `_` or `-`; 48 at most.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Turns a script or entry-point name into a valid server name.
pub fn sanitize_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while name.starts_with(['-', '_']) {
        name.remove(0);
    }
    name.truncate(48);
    if name.is_empty() { "server".into() } else { name }
}

struct Extractor<'a> {
    file: &'a SourceFile,
    /// Built once per file: looking lines up by scanning would be quadratic.
    lines: located::LineIndex<'a>,
    env: &'a Environment<'a>,
    limits: &'a Limits,
    base_dir: &'a Path,
    out: Extracted,
}

/// Extracts servers (and a manager section) from one file, within `limits`.
pub fn extract(file: &SourceFile, env: &Environment<'_>, limits: &Limits) -> Extracted {
    let base_dir = file.path.parent().unwrap_or(Path::new("."));
    // YAML counts a lone `\r` as a line break: make it one for everyone (same
    // length, so every offset stays), or lines would disagree with the parser's.
    let text: std::borrow::Cow<'_, str> = if file.kind == SourceKind::Yaml && has_lone_cr(&file.text) {
        let mut bytes = file.text.clone().into_bytes();
        for i in 0..bytes.len() {
            if bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
                bytes[i] = b'\n';
            }
        }
        // One ASCII byte for another: still UTF-8.
        std::borrow::Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|_| file.text.clone()))
    } else {
        std::borrow::Cow::Borrowed(&file.text)
    };
    let text = text.as_ref();
    let mut x = Extractor {
        file,
        lines: located::LineIndex::new(text),
        env,
        limits,
        base_dir,
        out: Extracted::default(),
    };
    if file.kind == SourceKind::Script {
        x.script();
        return x.out;
    }
    let parsed = match file.kind {
        SourceKind::Yaml => located::parse_yaml(text, limits),
        SourceKind::PyProject => located::parse_toml(text, limits),
        _ => located::parse_json(text, limits),
    };
    let root = match parsed {
        Ok(root) => root,
        Err(e) => {
            x.error(e.pos, e.message);
            return x.out;
        }
    };
    if matches!(root.kind, NodeKind::Null) && file.kind == SourceKind::Yaml {
        return x.out;
    }
    if !matches!(root.kind, NodeKind::Map(_)) {
        x.error(
            root.pos,
            format!("expected an object at the top of the file, found {}", root.type_name()),
        );
        return x.out;
    }
    match file.kind {
        SourceKind::Yaml => x.yaml(&root),
        SourceKind::McpJson | SourceKind::VsCode => x.mcp_json(&root),
        SourceKind::PyProject => x.pyproject(&root),
        SourceKind::PackageJson => x.package_json(&root),
        SourceKind::Script => {}
    }
    x.out
}

/// The gateway's own entry in a client's config, as `client add` writes it
/// (`mcp-manager ... connect`): a client of this manager, not a server for it to
/// run (that would connect the gateway to itself).
fn is_gateway_entry(raw: &Value) -> bool {
    let command = raw.get("command").and_then(Value::as_str).unwrap_or_default();
    let last_arg = raw
        .get("args")
        .and_then(Value::as_array)
        .and_then(|args| args.last())
        .and_then(Value::as_str);
    std::path::Path::new(command)
        .file_name()
        .is_some_and(|n| n == "mcp-manager")
        && last_arg == Some("connect")
}

fn has_lone_cr(text: &str) -> bool {
    text.match_indices('\r')
        .any(|(i, _)| text.as_bytes().get(i + 1) != Some(&b'\n'))
}

/// The entries of a scripts table whose names mention MCP: inferred servers.
fn mcp_scripts(scripts: &Node) -> impl Iterator<Item = &located::Entry> {
    scripts
        .entries()
        .iter()
        .filter(|e| e.key.to_ascii_lowercase().contains("mcp"))
}

/// The node a JSON pointer names, if it exists.
fn node_at<'n>(root: &'n Node, pointer: &str) -> Option<&'n Node> {
    pointer.split('/').skip(1).try_fold(root, |node, key| node.get(key))
}

impl<'a> Extractor<'a> {
    fn diag(&mut self, severity: Severity, pos: Pos, message: impl Into<String>) {
        let mut diagnostic = Diagnostic::with_line(severity, &self.file.path, pos, message, None);
        diagnostic.snippet = self.snippet(pos);
        self.out.diagnostics.push(diagnostic);
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diag(Severity::Error, pos, message);
    }

    /// Checks the number of servers a file declares against the limit; over it,
    /// the file is an error and nothing in it is looked at further.
    fn too_many_servers(&mut self, count: usize, pos: Pos) -> bool {
        let limit = self.limits.max_servers_per_file;
        if count <= limit {
            return false;
        }
        self.error(
            pos,
            format!("{count} servers in one file, over the limit of {limit} (manager.limits.max_servers_per_file)"),
        );
        true
    }

    fn provenance(&self, pos: Pos) -> Provenance {
        Provenance {
            file: self.file.path.clone(),
            line: pos.line,
            column: pos.col,
            source: self.file.kind,
        }
    }

    fn snippet(&self, pos: Pos) -> Option<Snippet> {
        self.lines.snippet(pos)
    }

    /// `${workspaceFolder}`: the folder holding `.vscode`, else the file's folder.
    fn workspace_folder(&self) -> String {
        let dir = match self.file.kind {
            SourceKind::VsCode => self.base_dir.parent().unwrap_or(self.base_dir),
            _ => self.base_dir,
        };
        dir.to_string_lossy().into_owned()
    }

    /// Converts the subtree at `at` to JSON, expands variables and validates it.
    ///
    /// Returns the expanded value and the pointers (relative to `at`) that had errors.
    fn checked_json(&mut self, root: &Node, at: &str, shape: Shape) -> (Value, Vec<String>) {
        match node_at(root, at) {
            Some(node) => self.checked(node, shape),
            None => (Value::Null, Vec::new()),
        }
    }

    /// [`Self::checked_json`] for a node at hand.
    fn checked(&mut self, node: &Node, shape: Shape) -> (Value, Vec<String>) {
        let mut value = node.to_json();
        let mut bad = Vec::new();
        let workspace = self.workspace_folder();
        let ctx = ExpandContext {
            lookup: self.env.lookup,
            workspace_folder: &workspace,
            in_command_line: false,
        };
        let mut expand_errors = Vec::new();
        env::expand_value(&mut value, &ctx, &mut String::new(), &mut expand_errors);
        for e in expand_errors {
            self.error(node.locate(&e.pointer), e.message);
            bad.push(e.pointer);
        }
        for e in schema::validate(&value, shape) {
            self.error(node.locate(&e.pointer), e.message);
            bad.push(e.pointer);
        }
        (value, bad)
    }

    /// Normalizes the servers of a `{NAME: spec}` table.
    ///
    /// `table` is the table's node; `json` its expanded value; `bad` the pointers
    /// (relative to the table) that already have errors.
    fn server_table(&mut self, table: &Node, json: &Value, bad: &[String]) {
        // The first segment of each pointer with errors: the servers that have them.
        let bad_servers: std::collections::HashSet<&str> = bad
            .iter()
            .filter_map(|p| p.strip_prefix('/'))
            .map(|p| p.split('/').next().unwrap_or(p))
            .collect();
        for entry in table.entries() {
            let escaped = entry.key.replace('~', "~0").replace('/', "~1");
            let has_errors = bad_servers.contains(escaped.as_str());
            self.server(
                &entry.key,
                entry.key_pos,
                &entry.value,
                json.get(&entry.key),
                has_errors,
            );
        }
    }

    fn server(&mut self, name: &str, name_pos: Pos, node: &Node, json: Option<&Value>, has_errors: bool) {
        if json.is_some_and(is_gateway_entry) {
            return;
        }
        let mut spec = None;
        if !is_valid_name(name) {
            self.error(
                name_pos,
                format!("server name `{name}` is invalid: use letters, digits, `_` and `-`, start with a letter or digit, at most 48 characters"),
            );
        } else if !has_errors && let Some(Value::Object(raw)) = json {
            let (normalized, problems) = spec::normalize(
                raw,
                &NormalizeContext {
                    base_dir: self.base_dir,
                },
            );
            for p in problems {
                let pos = if p.pointer.is_empty() {
                    name_pos
                } else {
                    node.locate(&p.pointer)
                };
                let severity = if p.warning { Severity::Warning } else { Severity::Error };
                self.diag(severity, pos, p.message);
            }
            spec = normalized;
        }
        let given_fields = match json {
            Some(Value::Object(raw)) => raw.keys().cloned().collect(),
            _ => Vec::new(),
        };
        self.out.servers.push(FoundServer {
            name: name.to_string(),
            spec,
            provenance: self.provenance(name_pos),
            inferred: false,
            snippet: self.snippet(name_pos),
            given_fields,
        });
    }

    fn inferred(&mut self, name: &str, pos: Pos, raw: Value) {
        let Value::Object(raw) = raw else { return };
        let (spec, problems) = spec::normalize(
            &raw,
            &NormalizeContext {
                base_dir: self.base_dir,
            },
        );
        for p in problems {
            self.diag(
                Severity::Warning,
                pos,
                format!("inferred server `{name}`: {}", p.message),
            );
        }
        self.out.servers.push(FoundServer {
            name: sanitize_name(name),
            spec,
            provenance: self.provenance(pos),
            inferred: true,
            snippet: self.snippet(pos),
            given_fields: Vec::new(),
        });
    }

    fn yaml(&mut self, root: &Node) {
        let count: usize = ["servers", "mcp_servers"]
            .iter()
            .filter_map(|k| root.get(k))
            .map(|table| table.entries().len())
            .sum();
        let count_pos = root
            .entry("servers")
            .or(root.entry("mcp_servers"))
            .map_or(root.pos, |e| e.key_pos);
        if self.too_many_servers(count, count_pos) {
            return;
        }
        let (json, bad) = self.checked_json(root, "", Shape::Document);
        for key in ["servers", "mcp_servers"] {
            let Some(table) = root.get(key) else { continue };
            let table_bad: Vec<String> = bad
                .iter()
                .filter_map(|p| p.strip_prefix(&format!("/{key}")).map(str::to_string))
                .collect();
            self.server_table(table, &json[key], &table_bad);
        }
        self.manager_section(root, &json, &bad);
    }

    /// The manager settings: under `manager:`, or at the top level of the file as
    /// the original tool's manager configuration is written (not both).
    fn manager_section(&mut self, root: &Node, json: &Value, bad: &[String]) {
        let top_level: Vec<&located::Entry> = root
            .entries()
            .iter()
            .filter(|e| schema::is_manager_key(&e.key))
            .collect();
        let section = root.entry("manager");
        let (value, pos, keys): (Value, Pos, Vec<&str>) = match (section, top_level.first()) {
            (Some(_), Some(first)) => {
                self.out.manager_invalid = true;
                self.error(
                    first.key_pos,
                    format!(
                        "`{}` is a manager setting and this file also has a `manager:` section; move it there",
                        first.key
                    ),
                );
                return;
            }
            (Some(entry), None) => (json["manager"].clone(), entry.key_pos, vec!["manager"]),
            (None, Some(first)) => {
                let keys: Vec<&str> = top_level.iter().map(|e| e.key.as_str()).collect();
                let object = keys.iter().map(|k| (k.to_string(), json[*k].clone())).collect();
                (Value::Object(object), first.key_pos, keys)
            }
            (None, None) => return,
        };
        let has_errors = bad.iter().any(|p| {
            keys.iter().any(|k| {
                p.strip_prefix('/')
                    .and_then(|p| p.strip_prefix(k))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        });
        if has_errors {
            self.out.manager_invalid = true;
            return;
        }
        let settings = serde_json::from_value::<ManagerSettings>(value)
            .map_err(|e| e.to_string())
            .and_then(ManagerSettings::resolve);
        match settings {
            Ok(mut settings) => {
                // Folders and files named here are relative to this file.
                let base = self.base_dir;
                let relative = |p: &mut String| *p = spec::resolve(base, p).to_string_lossy().into_owned();
                settings.discovery.config_directories.iter_mut().for_each(relative);
                settings.storage.state_file.iter_mut().for_each(relative);
                if !settings.discovery.auto_discovery && !settings.discovery.config_directories.is_empty() {
                    self.diag(
                        Severity::Warning,
                        pos,
                        "discovery.config_directories is ignored: auto_discovery is false, so no folder is scanned",
                    );
                }
                self.out.manager = Some((settings, self.provenance(pos)));
            }
            Err(e) => {
                self.out.manager_invalid = true;
                self.error(pos, format!("invalid manager settings: {e}"));
            }
        }
    }

    fn mcp_json(&mut self, root: &Node) {
        let present: Vec<&str> = ["mcpServers", "servers"]
            .into_iter()
            .filter(|k| root.get(k).is_some())
            .collect();
        if present.len() == 2 {
            let pos = root.entry("servers").map_or(root.pos, |e| e.key_pos);
            self.error(pos, "both `mcpServers` and `servers` are given; keep one");
            return;
        }
        let Some(key) = present.first() else { return };
        let Some(table) = root.get(key) else { return };
        if !matches!(table.kind, NodeKind::Map(_)) {
            self.error(
                table.pos,
                format!("`{key}` must be an object of servers, found {}", table.type_name()),
            );
            return;
        }
        if self.too_many_servers(table.entries().len(), table.pos) {
            return;
        }
        for entry in table.entries() {
            let (json, bad) = self.checked(&entry.value, Shape::Server);
            self.server(&entry.key, entry.key_pos, &entry.value, Some(&json), !bad.is_empty());
        }
    }

    fn servers_table_at(&mut self, root: &Node, at: &str) {
        let Some(node) = node_at(root, at) else { return };
        if let Some(table) = node.get("servers")
            && self.too_many_servers(table.entries().len(), table.pos)
        {
            return;
        }
        let (json, bad) = self.checked_json(root, at, Shape::ServersTable);
        if let Some(table) = node.get("servers") {
            let table_bad: Vec<String> = bad
                .iter()
                .filter_map(|p| p.strip_prefix("/servers").map(str::to_string))
                .collect();
            self.server_table(table, &json["servers"], &table_bad);
        }
    }

    fn pyproject(&mut self, root: &Node) {
        self.servers_table_at(root, "/tool/mcp");
        for at in ["/project/scripts", "/tool/poetry/scripts"] {
            let Some(scripts) = node_at(root, at) else { continue };
            if self.too_many_servers(self.out.servers.len() + mcp_scripts(scripts).count(), scripts.pos) {
                return;
            }
            for entry in mcp_scripts(scripts) {
                let target = entry.value.as_str().unwrap_or("");
                let raw = serde_json::json!({
                    "command": entry.key,
                    "description": format!("inferred from pyproject.toml scripts: {} = \"{target}\"", entry.key),
                    "server_type": "python",
                });
                self.inferred(&entry.key, entry.key_pos, raw);
            }
        }
    }

    fn package_json(&mut self, root: &Node) {
        if let Some(mcp) = root.get("mcp")
            && !matches!(mcp.kind, NodeKind::Map(_))
        {
            self.error(
                mcp.pos,
                format!("`mcp` must be an object with `servers`, found {}", mcp.type_name()),
            );
            return;
        }
        self.servers_table_at(root, "/mcp");
        let Some(scripts) = root.get("scripts") else { return };
        if self.too_many_servers(self.out.servers.len() + mcp_scripts(scripts).count(), scripts.pos) {
            return;
        }
        for entry in mcp_scripts(scripts) {
            // `--silent` keeps npm's banner off stdout, which carries the MCP protocol.
            let raw = serde_json::json!({
                "command": "npm",
                "args": ["run", "--silent", entry.key],
                "description": format!("inferred from package.json script `{}`", entry.key),
            });
            self.inferred(&entry.key, entry.key_pos, raw);
        }
    }

    fn script(&mut self) {
        let stem = self.file.path.file_stem().and_then(|s| s.to_str()).unwrap_or("script");
        let raw = serde_json::json!({
            "command": self.file.path.to_string_lossy(),
            "description": format!("inferred from executable {}", self.file.path.display()),
        });
        self.inferred(stem, Pos::new(1, 1), raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("github") && is_valid_name("a_b-c9") && is_valid_name(&"a".repeat(48)));
        assert!(!is_valid_name("-x") && !is_valid_name("a b") && !is_valid_name("") && !is_valid_name(&"a".repeat(49)));
        assert_eq!(sanitize_name("start:mcp"), "start-mcp");
        assert_eq!(sanitize_name("_mcp.server"), "mcp-server");
    }
}
