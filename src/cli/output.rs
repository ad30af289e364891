//! Small output helpers shared by commands: aligned tables, diagnostics, JSON.

use std::io::Write;

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
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints every diagnostic to stderr, paths relative to the working folder.
pub fn print_diagnostics(globals: &Globals, diagnostics: &[Diagnostic]) {
    let mut stderr = std::io::stderr().lock();
    for d in diagnostics {
        let mut shown = d.clone();
        shown.file = display_path(&d.file, globals.relative_to()).into();
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
