//! The bottom line of a terminal: `start`'s progress bar stays there, on its
//! own line below the log. Every log line written to the terminal first clears
//! the bar, then the bar is drawn again under it, so the two never share a line.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The bar's text while it is shown (`None`: nothing is drawn at the bottom).
static BOTTOM: Mutex<Option<String>> = Mutex::new(None);

/// Erases the current terminal line and puts the cursor at its start.
const CLEAR_LINE: &str = "\r\x1b[2K";

fn bottom() -> std::sync::MutexGuard<'static, Option<String>> {
    // A poisoned lock only means a writer panicked mid-line: the text is still usable.
    BOTTOM.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set once the bar is finished: nothing is drawn at the bottom any more.
static FINISHED: AtomicBool = AtomicBool::new(false);

/// Draws (or redraws) `text` as the bottom line of stdout (not after [`finish`]).
pub fn show(text: &str) {
    let mut shown = bottom();
    if FINISHED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{CLEAR_LINE}{text}");
    let _ = out.flush();
    *shown = Some(text.to_string());
}

/// Leaves the bar where it is (its last state stays on screen) and ends its line;
/// later log lines go below it. Called when every server is up, and when the
/// service stops (so the shell prompt never lands on the bar).
pub fn finish() {
    let mut shown = bottom();
    FINISHED.store(true, Ordering::Relaxed);
    if shown.take().is_some() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out);
        let _ = out.flush();
    }
}

/// Writes `bytes` (whole log lines) to stderr above the bottom line.
fn write_above(bytes: &[u8]) {
    let shown = bottom();
    let Some(text) = shown.as_deref() else {
        // No bar: stdout is not involved (it may be a blocked pipe).
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
        return;
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{CLEAR_LINE}");
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes);
    let _ = err.flush();
    let _ = write!(out, "{text}");
    let _ = out.flush();
}

/// A log writer for stderr that keeps the bottom line intact: it collects one
/// event's output and writes it when dropped (the formatter makes one writer per
/// event).
#[derive(Default)]
pub struct AboveBottomLine {
    pending: Vec<u8>,
}

impl Write for AboveBottomLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            write_above(&std::mem::take(&mut self.pending));
        }
        Ok(())
    }
}

impl Drop for AboveBottomLine {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Makes an [`AboveBottomLine`] per log event.
pub fn log_writer() -> AboveBottomLine {
    AboveBottomLine::default()
}
