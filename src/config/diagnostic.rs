//! Located config problems, rendered as `file:line:col: message` with a snippet.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::located::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file. Collected, never thrown: `validate` shows them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub message: String,
    /// The source line the problem is on, for the snippet.
    #[serde(skip)]
    pub source_line: Option<String>,
}

impl Diagnostic {
    pub fn new(
        severity: Severity,
        file: impl Into<PathBuf>,
        pos: Pos,
        message: impl Into<String>,
        text: Option<&str>,
    ) -> Self {
        let source_line = text
            .and_then(|t| t.lines().nth(pos.line.saturating_sub(1) as usize))
            .map(str::to_string);
        Self::with_line(severity, file, pos, message, source_line)
    }

    /// Like [`Diagnostic::new`], with the source line already looked up.
    pub fn with_line(
        severity: Severity,
        file: impl Into<PathBuf>,
        pos: Pos,
        message: impl Into<String>,
        source_line: Option<String>,
    ) -> Self {
        Diagnostic {
            severity,
            file: file.into(),
            line: pos.line,
            column: pos.col,
            message: message.into(),
            source_line,
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
        if let Some(line) = &self.source_line {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let caret_at = line
                .chars()
                .take(self.column.saturating_sub(1) as usize)
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
}
