//! Small output helpers shared by commands: aligned tables, diagnostics, JSON.

use std::io::{IsTerminal, Write};

use crate::config::{Diagnostic, LoadOutcome};
use crate::plan::display_path;

use super::Globals;

/// A plain, aligned text table (no borders: easy to read and to grep).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| display_width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(display_width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(widths[i] - display_width(cell) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Terminal columns a cell takes: emoji marks are two wide, variation
/// selectors none.
pub fn display_width(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            '\u{FE0F}' => 0,
            '\u{2705}' | '\u{26A0}' | '\u{274C}' | '\u{1F6A8}' => 2,
            _ => 1,
        })
        .sum()
}

/// Prints every diagnostic to stderr, paths relative to the working folder.
/// The source line is shown whole only to a person at a terminal; stderr that
/// is a file (a daemon's log, journald) gets it with its value cut out.
pub fn print_diagnostics(globals: &Globals, diagnostics: &[Diagnostic]) {
    let terminal = std::io::stderr().is_terminal();
    let mut stderr = std::io::stderr().lock();
    for d in diagnostics {
        let mut shown = d.clone();
        shown.file = display_path(&d.file, globals.relative_to()).into();
        if !terminal {
            shown.snippet = shown.snippet.as_ref().map(crate::config::Snippet::without_values);
        }
        let _ = writeln!(stderr, "{shown}");
    }
}

/// Prints diagnostics and, when there are errors, a closing count. Returns whether
/// there were errors.
pub fn report_load(globals: &Globals, outcome: &LoadOutcome) -> bool {
    print_diagnostics(globals, &outcome.diagnostics);
    let errors = outcome.error_count();
    if errors > 0 {
        let files = outcome.invalid_files.len();
        eprintln!(
            "error: the configuration has {errors} error{} in {files} file{}; nothing was planned or changed",
            plural(errors),
            plural(files)
        );
    }
    errors > 0
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Writes pretty JSON and a newline to stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

/// Asks `question` on the terminal (`apply`'s confirmation): true only for
/// `yes`. Fails when stdin is not a terminal: no silent yes nor no.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::BufRead as _;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("not applying without confirmation: stdin is not a terminal; pass --auto-approve");
    }
    print!("\n{question} Only 'yes' will be accepted: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}
