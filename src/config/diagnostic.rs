//! Located config problems, rendered as `file:line:col: message` with a snippet.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::located::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file. Collected, never thrown: `validate` shows them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub message: String,
    /// The source line the problem is on (a window of it when it is long), for
    /// the snippet. Serialized (the API, the dashboard, `--json`, saved plans)
    /// only [`Snippet::without_values`]: a value may be a secret.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "snippet_without_values"
    )]
    pub snippet: Option<Snippet>,
}

fn snippet_without_values<S: serde::Serializer>(snippet: &Option<Snippet>, out: S) -> Result<S::Ok, S::Error> {
    snippet.as_ref().map(Snippet::without_values).serialize(out)
}

/// Where a key that starts `text` ends, its separator included: a quoted key
/// (`"API_KEY":`), a bare key followed by `: ` or a line end (YAML: `a:b` is one
/// scalar), a `key = value` (TOML), or a flag (`--token=`). `None` when `text`
/// does not start with a key (a bare value such as base64 ending in `=`).
fn key_end(text: &str) -> Option<usize> {
    let quoted = text.starts_with(['"', '\'']);
    let name_end = if quoted {
        let q = text.chars().next()?;
        let mut escaped = false;
        text.char_indices().skip(1).find_map(|(i, c)| {
            let end = !escaped && c == q;
            escaped = !escaped && c == '\\';
            end.then_some(i + 1)
        })?
    } else {
        let flag = usize::from(text.starts_with("--")) * 2;
        flag + text[flag..]
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .unwrap_or(text.len() - flag)
    };
    if name_end == 0 {
        return None;
    }
    let spaces = text[name_end..].len() - text[name_end..].trim_start().len();
    let at = name_end + spaces;
    // A word with nothing after it is a bare value.
    let separator = text[at..].chars().next()?;
    let after = &text[at + separator.len_utf8()..];
    let has_value = !after.trim().is_empty();
    match separator {
        ':' if quoted || after.is_empty() || after.starts_with(char::is_whitespace) => Some(at + 1),
        // `abc=` with nothing after is a value (base64 padding), not a key.
        '=' if has_value && (spaces > 0 || text.starts_with("--") || !text[..name_end].contains('-')) => Some(at + 1),
        _ => None,
    }
}

/// A source line for a diagnostic, cut to a window around the column when it is
/// long: a minified file is one line, and copying it for every problem (or every
/// server) would cost memory quadratic in its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snippet {
    pub text: String,
    /// 1-based column of the caret within `text`.
    pub caret: u32,
}

impl Snippet {
    /// Characters shown before and after the column of a long line.
    const BEFORE: usize = 60;
    const AFTER: usize = 100;
    /// Lines longer than this (in bytes) are cut.
    pub const LONG: usize = Self::BEFORE + Self::AFTER;

    pub fn new(line: &str, column: u32) -> Snippet {
        if line.len() <= Self::LONG {
            return Snippet {
                text: line.to_string(),
                caret: column,
            };
        }
        let col = (column.max(1) - 1) as usize;
        let at = line.char_indices().nth(col).map_or(line.len(), |(b, _)| b);
        Self::around(line, at)
    }

    /// The line with its value cut out: the key and the separator stay
    /// (`API_KEY: …`), so the reader sees where the problem is but never a value,
    /// which may be a secret (an env value, a header). A line without a key (a
    /// list item, a bare value, a window that starts mid-line) keeps only its
    /// indentation and `- `; a line of nothing but brackets is kept whole.
    pub fn without_values(&self) -> Snippet {
        let indent = self.text.len() - self.text.trim_start().len();
        let item = usize::from(self.text[indent..].starts_with("- ")) * 2;
        let key = if self.text.starts_with('…') {
            None
        } else {
            key_end(&self.text[indent + item..])
        };
        let keep = indent + item + key.unwrap_or(0);
        let (head, tail) = self.text.split_at(keep);
        let tail = tail.trim();
        if tail.chars().all(|c| matches!(c, '{' | '[' | ',' | '}' | ']')) {
            return self.clone();
        }
        let head_chars = u32::try_from(head.chars().count()).unwrap_or(u32::MAX);
        let spaced = if head.ends_with(' ') || head.is_empty() {
            ""
        } else {
            " "
        };
        Snippet {
            text: format!("{head}{spaced}…"),
            caret: self
                .caret
                .min(head_chars.saturating_add(1 + u32::from(!spaced.is_empty()))),
        }
    }

    /// A window of `line` around byte offset `at` (a character boundary).
    pub fn around(line: &str, at: usize) -> Snippet {
        let at = (0..=at.min(line.len()))
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        let before = &line[..at];
        let start = before.char_indices().rev().nth(Self::BEFORE - 1).map_or(0, |(b, _)| b);
        let after = &line[at..];
        let end = at + after.char_indices().nth(Self::AFTER).map_or(after.len(), |(b, _)| b);
        let mut text = String::new();
        if start > 0 {
            text.push('…');
        }
        text.push_str(&line[start..end]);
        if end < line.len() {
            text.push('…');
        }
        let caret = line[start..at].chars().count() + 1 + usize::from(start > 0);
        Snippet {
            text,
            caret: u32::try_from(caret).unwrap_or(1),
        }
    }
}

impl Diagnostic {
    pub fn new(
        severity: Severity,
        file: impl Into<PathBuf>,
        pos: Pos,
        message: impl Into<String>,
        text: Option<&str>,
    ) -> Self {
        let source_line = text.and_then(|t| t.lines().nth(pos.line.saturating_sub(1) as usize));
        Self::with_line(severity, file, pos, message, source_line)
    }

    /// Like [`Diagnostic::new`], with the source line already looked up.
    pub fn with_line(
        severity: Severity,
        file: impl Into<PathBuf>,
        pos: Pos,
        message: impl Into<String>,
        source_line: Option<&str>,
    ) -> Self {
        Diagnostic {
            severity,
            file: file.into(),
            line: pos.line,
            column: pos.col,
            message: message.into(),
            snippet: source_line.map(|line| Snippet::new(line, pos.col)),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` (or just `file` when the problem has no position).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.display().to_string()
        } else {
            format!("{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

impl fmt::Display for Diagnostic {
    /// Renders the problem with a caret under the column, like a compiler.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {label}: {}", self.location(), self.message)?;
        if let Some(Snippet { text: line, caret }) = &self.snippet {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let caret_at = line
                .chars()
                .take(caret.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect::<String>();
            write!(f, "\n{pad} |\n{number} | {line}\n{pad} | {caret_at}^")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_and_snippet() {
        let text = "servers:\n  web:\n    comand: node\n";
        let d = Diagnostic::new(
            Severity::Error,
            "cfg/mcp.yaml",
            Pos::new(3, 5),
            "unknown field `comand`",
            Some(text),
        );
        assert_eq!(
            d.to_string(),
            "cfg/mcp.yaml:3:5: error: unknown field `comand`\n  |\n3 |     comand: node\n  |     ^"
        );
    }

    #[test]
    fn long_lines_are_cut_to_a_window_around_the_column() {
        let line = format!("{}X{}", "a".repeat(5000), "b".repeat(5000));
        let s = Snippet::new(&line, 5001);
        assert!(s.text.chars().count() < 200, "{}", s.text);
        assert!(s.text.starts_with('…') && s.text.ends_with('…'));
        assert_eq!(s.text.chars().nth(s.caret as usize - 1), Some('X'));
        let s = Snippet::new(&line, 3);
        assert_eq!(s.text.chars().nth(s.caret as usize - 1), Some('a'));
        assert!(!s.text.starts_with('…'));
    }

    #[test]
    fn without_values_keeps_keys_and_structure_only() {
        let hide = |text: &str, caret: u32| {
            let s = Snippet {
                text: text.into(),
                caret,
            }
            .without_values();
            (s.text, s.caret)
        };
        assert_eq!(
            hide("    API_KEY: sk-live-123", 14),
            ("    API_KEY: \u{2026}".into(), 14)
        );
        assert_eq!(hide("  \"token\":\"a:b\",", 12), ("  \"token\": \u{2026}".into(), 12));
        assert_eq!(hide("secret = 'x=y'", 10), ("secret = \u{2026}".into(), 10));
        assert_eq!(
            hide("      - --password=hunter2", 9),
            ("      - --password= \u{2026}".into(), 9)
        );
        assert_eq!(hide("      - hunter2", 9), ("      - \u{2026}".into(), 9));
        // Values that only look like keys stay hidden.
        assert_eq!(hide("      - c2stbGl2ZS0xMjM=", 9), ("      - \u{2026}".into(), 9));
        assert_eq!(hide("      - sk-live-abc:def", 9), ("      - \u{2026}".into(), 9));
        assert_eq!(hide("\u{2026}ret-value, B: x}", 2), ("\u{2026}".into(), 1));
        assert_eq!(hide("  \"a\\\"b\": 1", 3), ("  \"a\\\"b\": \u{2026}".into(), 3));
        // Nothing but structure: shown as it is.
        assert_eq!(hide("  servers: {", 3), ("  servers: {".into(), 3));
        assert_eq!(hide("  ],", 3), ("  ],".into(), 3));
    }

    #[test]
    fn serialized_diagnostics_never_carry_a_value() {
        let d = Diagnostic::with_line(
            Severity::Error,
            "cfg/mcp.yaml",
            Pos::new(3, 14),
            "bad",
            Some("    API_KEY: sk-live-123"),
        );
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("sk-live-123"), "{json}");
        assert!(json.contains("API_KEY:"), "{json}");
        // In memory (a terminal's `validate`) the whole line stays.
        assert!(d.snippet.unwrap().text.contains("sk-live-123"));
    }

    proptest::proptest! {
        /// Any line, any column: no panic, the caret never moves right, and a
        /// value after a key never survives.
        #[test]
        fn without_values_takes_any_line(line in "[ -~\u{e9}\u{2026}]{0,40}", caret in 0u32..60, value in "[a-z0-9]{6,12}") {
            let s = Snippet { text: line.clone(), caret }.without_values();
            proptest::prop_assert!(s.caret <= caret);
            let keyed = Snippet { text: format!("  KEY: {value} {line}"), caret }.without_values();
            proptest::prop_assert!(!keyed.text.contains(&value), "{:?}", keyed);
        }
    }
}
