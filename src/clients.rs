//! Desktop MCP clients (Claude Desktop, Claude Code, Cursor, VS Code, Windsurf):
//! where each keeps its MCP servers, in which format, and the edit that adds or
//! removes the gateway's entry. Pure: the caller reads and writes the files.
//!
//! The files are JSON with comments (VS Code's are JSONC); edits go through a
//! concrete syntax tree, so every other entry, comment and blank line stays as
//! the user wrote it.

use std::path::{Path, PathBuf};

use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use serde_json::{Value, json};

/// The name of the gateway's entry in every client's config.
pub const ENTRY: &str = "mcp-manager";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    ClaudeDesktop,
    ClaudeCode,
    Cursor,
    Vscode,
    Windsurf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// The user's own config: every project sees the gateway.
    User,
    /// The project's config file in the current folder (shared with the project).
    Project,
}

/// The few facts about the machine the paths depend on.
#[derive(Debug, Clone)]
pub struct Places {
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME`, or `~/.config`.
    pub config_home: PathBuf,
    /// The project folder (the current directory).
    pub project: PathBuf,
    pub macos: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClientError {
    #[error("{client} has no {scope} config; use --scope {other}")]
    NoSuchScope {
        client: &'static str,
        scope: &'static str,
        other: &'static str,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("`{key}` in this file is not an object; fix it by hand first")]
    NotAnObject { key: &'static str },
}

impl Client {
    pub const ALL: [Client; 5] = [
        Client::ClaudeDesktop,
        Client::ClaudeCode,
        Client::Cursor,
        Client::Vscode,
        Client::Windsurf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Client::ClaudeDesktop => "claude-desktop",
            Client::ClaudeCode => "claude-code",
            Client::Cursor => "cursor",
            Client::Vscode => "vscode",
            Client::Windsurf => "windsurf",
        }
    }

    /// The application's own name, for messages.
    pub fn title(self) -> &'static str {
        match self {
            Client::ClaudeDesktop => "Claude Desktop",
            Client::ClaudeCode => "Claude Code",
            Client::Cursor => "Cursor",
            Client::Vscode => "VS Code",
            Client::Windsurf => "Windsurf",
        }
    }

    /// The scopes the client has.
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Client::ClaudeDesktop | Client::Windsurf => &[Scope::User],
            Client::ClaudeCode | Client::Cursor | Client::Vscode => &[Scope::User, Scope::Project],
        }
    }

    /// The key of the object that holds the servers.
    pub fn key(self) -> &'static str {
        match self {
            Client::Vscode => "servers",
            _ => "mcpServers",
        }
    }

    /// The config file of `scope`.
    pub fn path(self, scope: Scope, at: &Places) -> Result<PathBuf, ClientError> {
        let app_support = at.home.join("Library/Application Support");
        let path = match (self, scope) {
            (Client::ClaudeDesktop, Scope::User) if at.macos => app_support.join("Claude/claude_desktop_config.json"),
            (Client::ClaudeDesktop, Scope::User) => at.config_home.join("Claude/claude_desktop_config.json"),
            (Client::ClaudeCode, Scope::User) => at.home.join(".claude.json"),
            (Client::ClaudeCode, Scope::Project) => at.project.join(".mcp.json"),
            (Client::Cursor, Scope::User) => at.home.join(".cursor/mcp.json"),
            (Client::Cursor, Scope::Project) => at.project.join(".cursor/mcp.json"),
            (Client::Vscode, Scope::User) if at.macos => app_support.join("Code/User/mcp.json"),
            (Client::Vscode, Scope::User) => at.config_home.join("Code/User/mcp.json"),
            (Client::Vscode, Scope::Project) => at.project.join(".vscode/mcp.json"),
            (Client::Windsurf, Scope::User) => at.home.join(".codeium/windsurf/mcp_config.json"),
            (Client::ClaudeDesktop | Client::Windsurf, Scope::Project) => {
                return Err(ClientError::NoSuchScope {
                    client: self.name(),
                    scope: "project",
                    other: "user",
                });
            }
        };
        Ok(path)
    }

    /// The gateway's entry: `connect` with absolute paths, so it works under
    /// the client's minimal environment (no PATH, no MCP_MANAGER_STATE_DIR).
    pub fn entry(self, binary: &Path, state_dir: &Path) -> Value {
        let args = json!(["--state-dir", state_dir.display().to_string(), "connect"]);
        let command = binary.display().to_string();
        match self {
            Client::ClaudeCode | Client::Vscode => json!({"type": "stdio", "command": command, "args": args}),
            _ => json!({"command": command, "args": args}),
        }
    }
}

/// A byte-order mark (Windows editors write one) is kept but not parsed.
fn split_bom(text: &str) -> (&str, &str) {
    match text.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", text),
    }
}

fn parse(text: &str) -> Result<CstRootNode, ClientError> {
    CstRootNode::parse(text, &ParseOptions::default()).map_err(|e| ClientError::Syntax(e.to_string()))
}

/// The object under `key` in the root object, if there is one; an error if
/// `key` holds something else.
fn servers(root: &CstRootNode, key: &'static str) -> Result<Option<CstObject>, ClientError> {
    let Some(top) = root.value() else { return Ok(None) };
    let top = top.as_object().ok_or(ClientError::NotAnObject { key: "the file" })?;
    match top.get(key) {
        None => Ok(None),
        Some(prop) => prop.object_value().map(Some).ok_or(ClientError::NotAnObject { key }),
    }
}

fn input(value: &Value) -> CstInputValue {
    match value {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(items) => CstInputValue::Array(items.iter().map(input).collect()),
        Value::Object(map) => CstInputValue::Object(map.iter().map(|(k, v)| (k.clone(), input(v))).collect()),
    }
}

/// The gateway's entry as the file has it now (`None`: not set up).
pub fn current(client: Client, text: &str) -> Result<Option<Value>, ClientError> {
    let (_, text) = split_bom(text);
    let value: Option<Value> = jsonc_parser::parse_to_serde_value(text, &ParseOptions::default())
        .map_err(|e| ClientError::Syntax(e.to_string()))?;
    Ok(value.and_then(|v| v.get(client.key())?.get(ENTRY).cloned()))
}

/// `text` with the gateway's entry set to `entry` (added, or replaced in place).
/// An empty `text` is a new file.
pub fn add(client: Client, text: &str, entry: &Value) -> Result<String, ClientError> {
    let (bom, text) = split_bom(text);
    let root = parse(text)?;
    if root.value().is_some_and(|v| v.as_object().is_none()) {
        return Err(ClientError::NotAnObject { key: "the file" });
    }
    let list = match servers(&root, client.key())? {
        Some(list) => list,
        None => root.object_value_or_set().object_value_or_set(client.key()),
    };
    match list.get(ENTRY) {
        Some(prop) => prop.set_value(input(entry)),
        None => {
            list.append(ENTRY, input(entry));
        }
    }
    let mut out = format!("{bom}{root}");
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// `text` without the gateway's entry (`None`: it had none).
pub fn remove(client: Client, text: &str) -> Result<Option<String>, ClientError> {
    let (bom, text) = split_bom(text);
    let root = parse(text)?;
    let Some(prop) = servers(&root, client.key())?.and_then(|list| list.get(ENTRY)) else {
        return Ok(None);
    };
    prop.remove();
    Ok(Some(format!("{bom}{root}")))
}

/// A unified diff of a config file's change, for the user to read. Other
/// entries' values (their `env`, headers, tokens) show up in its context and
/// in a line that gains a comma: every string value is printed as `"…"`,
/// except the strings of our own `entry`. Keys stay, so the reader sees where.
pub fn diff(path: &Path, before: &str, after: &str, entry: &Value) -> String {
    let mut ours: Vec<String> = vec![ENTRY.to_string()];
    collect_strings(entry, &mut ours);
    let name = path.display().to_string();
    let text_diff = similar::TextDiff::from_lines(before, after);
    let mut unified = text_diff.unified_diff();
    unified.context_radius(3);
    let mut out = format!("--- {name}\n+++ {name}\n");
    for hunk in unified.iter_hunks() {
        out.push_str(&format!("{}\n", hunk.header()));
        for change in hunk.iter_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            let line = change.value();
            out.push(sign);
            out.push_str(&mask_values(line.trim_end_matches(['\r', '\n']), &ours));
            out.push('\n');
        }
    }
    out
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// `line` with every string literal that is a value (not followed by `:`)
/// written `"…"`, unless its text is one of `keep`.
fn mask_values(line: &str, keep: &[String]) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..open]);
        let body = &rest[open + 1..];
        let mut escaped = false;
        let close = body.char_indices().find_map(|(i, c)| {
            let end = !escaped && c == '"';
            escaped = !escaped && c == '\\';
            end.then_some(i)
        });
        let Some(close) = close else {
            // An unclosed quote (a comment, a broken line): hide the rest.
            out.push_str("\"…");
            return out;
        };
        let literal = &body[..close];
        let after = &body[close + 1..];
        let is_key = after.trim_start().starts_with(':');
        let decoded: Option<String> = serde_json::from_str(&format!("\"{literal}\"")).ok();
        if is_key || decoded.is_some_and(|d| keep.contains(&d)) {
            out.push('"');
            out.push_str(literal);
            out.push('"');
        } else {
            out.push_str("\"…\"");
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        Client::Cursor.entry(
            Path::new("/opt/bin/mcp-manager"),
            Path::new("/home/u/.local/state/mcp-manager"),
        )
    }

    #[test]
    fn a_new_file_gets_just_the_entry() {
        let out = add(Client::Cursor, "", &entry()).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, json!({"mcpServers": {"mcp-manager": entry()}}));
        assert_eq!(current(Client::Cursor, &out).unwrap(), Some(entry()));
    }

    #[test]
    fn comments_and_other_servers_are_kept_and_the_entry_is_replaced_in_place() {
        let text = r#"{
  // my servers
  "servers": {
    "github": {"type": "http", "url": "https://api.githubcopilot.com/mcp/"}, // work
    "mcp-manager": {"command": "old"}
  },
  /* trailing */ "inputs": []
}
"#;
        let vscode = Client::Vscode.entry(Path::new("/b/mcp-manager"), Path::new("/s"));
        let out = add(Client::Vscode, text, &vscode).unwrap();
        for kept in [
            "// my servers",
            "// work",
            "/* trailing */",
            "\"inputs\": []",
            "githubcopilot",
        ] {
            assert!(out.contains(kept), "{kept} lost:\n{out}");
        }
        assert!(!out.contains("\"old\""), "{out}");
        assert_eq!(current(Client::Vscode, &out).unwrap(), Some(vscode.clone()));
        // The entry stays where it was: before `inputs`.
        assert!(out.find("/b/mcp-manager").unwrap() < out.find("inputs").unwrap());
        // Adding again changes nothing.
        assert_eq!(add(Client::Vscode, &out, &vscode).unwrap(), out);
    }

    #[test]
    fn remove_takes_out_only_the_entry() {
        let text = "{\n  \"mcpServers\": {\n    \"a\": {\"command\": \"x\"},\n    \"mcp-manager\": {\"command\": \"y\"}\n  },\n  \"numStartups\": 4\n}\n";
        let out = remove(Client::ClaudeCode, text).unwrap().unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, json!({"mcpServers": {"a": {"command": "x"}}, "numStartups": 4}));
        assert_eq!(remove(Client::ClaudeCode, &out).unwrap(), None);
    }

    #[test]
    fn broken_or_odd_files_are_refused_untouched() {
        assert!(matches!(
            add(Client::Cursor, "{\"mcpServers\": {", &entry()),
            Err(ClientError::Syntax(_))
        ));
        assert_eq!(
            add(Client::Cursor, "{\"mcpServers\": []}", &entry()),
            Err(ClientError::NotAnObject { key: "mcpServers" })
        );
        assert_eq!(
            add(Client::Cursor, "[1]", &entry()),
            Err(ClientError::NotAnObject { key: "the file" })
        );
    }

    #[test]
    fn paths_follow_each_client() {
        let at = Places {
            home: "/h".into(),
            config_home: "/h/.config".into(),
            project: "/p".into(),
            macos: false,
        };
        let path = |c: Client, s| c.path(s, &at).map(|p| p.display().to_string());
        assert_eq!(
            path(Client::ClaudeDesktop, Scope::User).unwrap(),
            "/h/.config/Claude/claude_desktop_config.json"
        );
        assert_eq!(path(Client::ClaudeCode, Scope::Project).unwrap(), "/p/.mcp.json");
        assert_eq!(path(Client::Vscode, Scope::Project).unwrap(), "/p/.vscode/mcp.json");
        assert_eq!(
            path(Client::Windsurf, Scope::User).unwrap(),
            "/h/.codeium/windsurf/mcp_config.json"
        );
        assert!(path(Client::Windsurf, Scope::Project).is_err());
        let mac = Places { macos: true, ..at };
        assert_eq!(
            Client::ClaudeDesktop.path(Scope::User, &mac).unwrap(),
            PathBuf::from("/h/Library/Application Support/Claude/claude_desktop_config.json")
        );
    }

    #[test]
    fn trailing_commas_crlf_a_bom_and_empty_files_are_fine() {
        let e = Client::Cursor.entry(Path::new("/b"), Path::new("/s"));
        for text in [
            "{\r\n  \"mcpServers\": {\r\n    \"a\": {\"command\": \"x\"},\r\n  },\r\n}\r\n",
            "\u{feff}{\"mcpServers\": {}}",
            "  \n",
            "{}",
        ] {
            let out = add(Client::Cursor, text, &e).unwrap_or_else(|err| panic!("{text:?}: {err}"));
            assert_eq!(current(Client::Cursor, &out).unwrap(), Some(e.clone()), "{text:?}");
        }
    }

    #[test]
    fn the_diff_never_shows_another_entrys_values() {
        let before = "{\n  \"mcpServers\": {\n    \"gh\": {\n      \"command\": \"npx\",\n      \"env\": {\"GITHUB_TOKEN\": \"ghp_secret\"}\n    },\n    \"one\": {\"command\": \"x\", \"env\": {\"K\": \"sk-secret\"}}\n  }\n}\n";
        let e = entry();
        let after = add(Client::Cursor, before, &e).unwrap();
        let shown = diff(Path::new("/c/mcp.json"), before, &after, &e);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("\"GITHUB_TOKEN\": \"…\""), "{shown}");
        assert!(
            shown.contains("+      \"command\": \"/opt/bin/mcp-manager\""),
            "{shown}"
        );
        let removed = remove(Client::Cursor, &after).unwrap().unwrap();
        let shown = diff(Path::new("/c/mcp.json"), &after, &removed, &e);
        assert!(
            !shown.contains("secret") && shown.contains("-    \"mcp-manager\": {"),
            "{shown}"
        );
    }
}
