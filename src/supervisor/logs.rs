//! Captured stderr of every server, and what the manager says about it (started,
//! exited, gave up: the same words as the status's LAST ERROR): a bounded ring
//! per server for `logs NAME`, and a broadcast for `logs NAME --follow`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Lines kept per server.
pub const RING: usize = 1000;
/// Longest line kept; the rest is cut (a server printing a blob must not eat memory).
pub const MAX_LINE: usize = 8192;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub server: String,
    pub replica: u32,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub line: String,
    /// Who wrote the line: the server (its stderr) or the manager.
    #[serde(default)]
    pub source: LogSource,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The server's stderr.
    #[default]
    Server,
    /// The manager, about the server (phase changes with their reasons).
    Manager,
}

#[derive(Clone)]
pub struct LogBook {
    rings: Arc<Mutex<HashMap<String, VecDeque<LogLine>>>>,
    live: broadcast::Sender<LogLine>,
}

impl Default for LogBook {
    fn default() -> Self {
        LogBook {
            rings: Arc::default(),
            live: broadcast::channel(1024).0,
        }
    }
}

impl LogBook {
    /// A line of the server's stderr.
    pub fn push(&self, server: &str, replica: u32, line: String) {
        self.push_from(server, replica, line, LogSource::Server);
    }

    /// A line of the manager's about the server.
    pub fn push_manager(&self, server: &str, replica: u32, line: String) {
        self.push_from(server, replica, line, LogSource::Manager);
    }

    fn push_from(&self, server: &str, replica: u32, mut line: String, source: LogSource) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" [cut]");
        }
        let entry = LogLine {
            server: server.to_string(),
            replica,
            at_ms: crate::now_ms(),
            line,
            source,
        };
        {
            // A poisoned lock only means another thread panicked mid-push; the ring
            // is still a valid VecDeque, so keep using it.
            let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
            let ring = rings.entry(server.to_string()).or_default();
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(entry.clone());
        }
        let _ = self.live.send(entry);
    }

    /// The last `n` lines of `server`.
    pub fn tail(&self, server: &str, n: usize) -> Vec<LogLine> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings
            .get(server)
            .map(|ring| ring.iter().skip(ring.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }
}

/// Reads a server's output to its end as lines: bytes split on `\n` (a `\r\n`
/// too), each line at most [`MAX_LINE`] bytes (the rest is dropped, not
/// buffered), decoded lossily. A `\r` alone starts the line over, as a terminal
/// shows a progress bar: only its last state is kept. It never stops before the
/// end of the stream, so the server can never write into a closed pipe.
pub async fn drain_lines<R>(mut reader: R, mut on_line: impl FnMut(String))
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut after_cr = false;
    let mut emit = |line: &mut Vec<u8>, cut: &mut bool| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if *cut {
            text.push_str(" [cut]");
        }
        on_line(text);
        line.clear();
        *cut = false;
    };
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if after_cr && b != b'\r' {
                after_cr = false;
                if b != b'\n' {
                    // A lone `\r`: what follows overwrites the line.
                    line.clear();
                    cut = false;
                }
            }
            match b {
                b'\n' => emit(&mut line, &mut cut),
                b'\r' => after_cr = true,
                _ if line.len() < MAX_LINE => line.push(b),
                _ => cut = true,
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, defect 8: invalid UTF-8, endless lines and progress bars.
    #[tokio::test]
    async fn draining_survives_invalid_utf8_long_lines_and_carriage_returns() {
        let mut input: Vec<u8> = b"before\n\xff\xfe bad\nafter\r\r\n10%\r50%\r100%\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
        input.extend(b"\nlast");
        let mut lines = Vec::new();
        drain_lines(&input[..], |l| lines.push(l)).await;
        assert_eq!(lines[..4], ["before", "\u{fffd}\u{fffd} bad", "after", "100%"]);
        assert_eq!(lines[4].len(), MAX_LINE + " [cut]".len());
        assert!(lines[4].ends_with(" [cut]"));
        assert_eq!(lines[5], "last");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn rings_are_bounded_and_lines_are_cut() {
        let book = LogBook::default();
        for i in 0..RING + 10 {
            book.push("a", 0, format!("line {i}"));
        }
        let tail = book.tail("a", usize::MAX);
        assert_eq!(tail.len(), RING);
        assert_eq!(tail.last().unwrap().line, format!("line {}", RING + 9));
        book.push("b", 0, "é".repeat(MAX_LINE));
        assert!(book.tail("b", 1)[0].line.ends_with(" [cut]"));
        assert!(book.tail("nobody", 5).is_empty());
    }
}
