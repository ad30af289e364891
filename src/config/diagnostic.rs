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
    /// the snippet.
    #[serde(skip)]
    pub snippet: Option<Snippet>,
}

/// A source line for a diagnostic, cut to a window around the column when it is
/// long: a minified file is one line, and copying it for every problem (or every
/// server) would cost memory quadratic in its size.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}
