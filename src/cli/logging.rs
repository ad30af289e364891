//! Logging for the service: level, format (text or JSON lines) and an optional
//! size-rotated log file, from flags, `MCP_MANAGER_LOG_*` and `manager:`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::ManagerSettings;

/// A log file is rotated when it grows past this size.
const ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept: `FILE.1` (newest) to `FILE.3`.
const KEEP: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// An append-only log file that rotates by size (`FILE` → `FILE.1` → ...).
#[derive(Clone)]
pub struct RotatingFile {
    inner: Arc<Mutex<(PathBuf, std::fs::File, u64)>>,
    limit: u64,
}

impl RotatingFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::with_limit(path, ROTATE_BYTES)
    }

    fn with_limit(path: &Path, limit: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_private(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            inner: Arc::new(Mutex::new((path.to_path_buf(), file, size))),
            limit,
        })
    }

    fn rotate(path: &Path) -> std::io::Result<std::fs::File> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(path, numbered(1))?;
        open_private(path)
    }
}

/// Opens a log file for appending, created with mode 0600: it receives every
/// server's stderr.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    crate::fsutil::make_private(path, 0o600);
    Ok(file)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (path, file, size) = &mut *guard;
        if *size + buf.len() as u64 > self.limit
            && *size > 0
            && let Ok(fresh) = Self::rotate(path)
        {
            *file = fresh;
            *size = 0;
        }
        file.write_all(buf)?;
        *size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1.flush()
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = RotatingFile;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'s> tracing_subscriber::registry::LookupSpan<'s>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    }
}

/// Sets up logging for `start`. Precedence: flag, then `MCP_MANAGER_LOG_LEVEL` /
/// `MCP_MANAGER_LOG_FORMAT` (or `RUST_LOG`), then the manager section.
pub fn init(manager: &ManagerSettings, format_flag: Option<LogFormat>) {
    let level = std::env::var("MCP_MANAGER_LOG_LEVEL")
        .ok()
        // A bare level in any case, Python's names too (`DEBUG`, `WARNING`).
        .map(|l| {
            let word = l.trim().to_ascii_lowercase();
            match word.as_str() {
                "trace" | "debug" | "info" | "warn" | "warning" | "error" | "critical" => {
                    crate::config::manager::canonical_log_level(&word).to_string()
                }
                _ => l,
            }
        })
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or_else(|| manager.log_level.as_ref().map(|l| format!("{l},rmcp=warn")))
        .unwrap_or_else(|| "info,rmcp=warn".into());
    // rmcp's OAuth debug lines carry authorization codes: never below info,
    // whatever level was asked for.
    let level = format!("{level},rmcp::transport::auth=info");
    let format = format_flag
        .or_else(|| match std::env::var("MCP_MANAGER_LOG_FORMAT").ok()?.as_str() {
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        })
        .or(match manager.log_format.as_deref() {
            Some("json") => Some(LogFormat::Json),
            _ => None,
        })
        .unwrap_or(LogFormat::Text);
    let terminal = std::io::stderr().is_terminal();
    let color = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let file = manager
        .log_file
        .as_ref()
        .and_then(|path| match RotatingFile::open(Path::new(path)) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("warning: cannot open log_file {path}: {e}; logging to stderr");
                None
            }
        });
    // With a log file, stderr gets the log only when someone watches it (a
    // daemon's stderr is that same file already).
    // On a terminal, log lines go above `start`'s progress bar (crate::terminal).
    let stderr = (file.is_none() || terminal).then(|| layer(format, crate::terminal::log_writer, color));
    let file = file.map(|f| layer(format, f, false));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(level))
        .with(stderr)
        .with(file)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_file_rotates_by_size_and_keeps_three() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/service.log");
        let mut file = RotatingFile::with_limit(&path, 100).unwrap();
        for i in 0..10 {
            file.write_all(format!("{i:02} {}\n", "x".repeat(60)).as_bytes())
                .unwrap();
        }
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_default();
        assert!(read("logs/service.log").starts_with("09 "));
        assert!(read("logs/service.log.1").starts_with("08 "));
        assert!(read("logs/service.log.3").starts_with("06 "));
        assert!(!dir.path().join("logs/service.log.4").exists());
    }
}
