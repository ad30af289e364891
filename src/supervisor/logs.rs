//! Captured stderr of every server: a bounded ring per server for `logs NAME`, and
//! a broadcast for `logs NAME --follow`.

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
    pub fn push(&self, server: &str, replica: u32, mut line: String) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
