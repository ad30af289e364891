//! The connection to a stdio server: newline-delimited JSON-RPC over its
//! stdin and stdout, with a side door for the gateway's tool calls.
//!
//! rmcp's client speaks over [`Stdio`] as over its own stdio transport: the
//! same framing (one message a line, a line of at most [`MAX_LINE`], a
//! carriage return or byte-order mark ignored) and nearly the same
//! tolerance: a line that is not JSON and a message without an id that we
//! cannot read (a notification of another protocol) are ignored; JSON with
//! an id of no known shape is answered with an Invalid Request error.
//!
//! The side door, [`RawLane`], sends a request that the gateway wrote
//! itself, straight from the task that calls (no hop through rmcp's
//! service task), under an id rmcp never uses (`"mm-raw-N"`, rmcp's ids are
//! numbers). Its answer, and its progress (a progress token equal to its
//! id), are taken off the stream as they are read, in the order the server
//! wrote them, and handed to the caller as lines, unparsed: the gateway
//! copies a result into its answer as the server wrote it. Everything else
//! goes to rmcp. When the server's stdout ends, every call waiting in the
//! lane ends with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rmcp::RoleClient;
use rmcp::model::ErrorData;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The longest line read from a server (rmcp's limit): a longer one is
/// dropped, never buffered whole.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The prefix of the ids (and progress tokens) of calls in the lane.
const PREFIX: &str = "mm-raw-";

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock leaves a map that is still whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A stdio server's connection, for rmcp's client, and its lane.
pub fn connect(
    read: impl AsyncRead + Send + Unpin + 'static,
    write: impl AsyncWrite + Send + Unpin + 'static,
) -> (Stdio, Arc<RawLane>) {
    let lane = Arc::new(RawLane {
        write: Arc::new(tokio::sync::Mutex::new(Some(Box::new(write)))),
        calls: Mutex::default(),
        waiting: AtomicUsize::new(0),
        next: AtomicU64::new(1),
        closed: AtomicBool::new(false),
    });
    let stdio = Stdio {
        read: BufReader::new(Box::new(read)),
        line: Vec::new(),
        discarding: false,
        owe_invalid: false,
        lane: lane.clone(),
    };
    (stdio, lane)
}

/// rmcp's side of the connection.
pub struct Stdio {
    read: BufReader<Box<dyn AsyncRead + Send + Unpin>>,
    /// The line being read (kept when a read is cancelled: `receive` runs
    /// inside rmcp's `select!`).
    line: Vec<u8>,
    /// Dropping the rest of a line longer than [`MAX_LINE`].
    discarding: bool,
    /// A well-formed message of no known shape came: answer Invalid Request.
    owe_invalid: bool,
    lane: Arc<RawLane>,
}

enum Read {
    Line,
    Oversized,
    End,
}

impl Stdio {
    /// Reads one line into `self.line`, never past [`MAX_LINE`].
    async fn read_line(&mut self) -> Read {
        loop {
            let (taken, read) = {
                let available = match self.read.fill_buf().await {
                    Ok(available) => available,
                    Err(e) => {
                        tracing::debug!("reading the server's stdout failed: {e}");
                        return Read::End;
                    }
                };
                if available.is_empty() {
                    return Read::End;
                }
                let newline = available.iter().position(|b| *b == b'\n');
                let taken = newline.map_or(available.len(), |i| i + 1);
                let read = if self.discarding {
                    self.discarding = newline.is_none();
                    None
                } else if self.line.len().saturating_add(taken) > MAX_LINE {
                    self.line.clear();
                    self.discarding = newline.is_none();
                    Some(Read::Oversized)
                } else {
                    self.line.extend_from_slice(&available[..taken]);
                    newline.map(|_| Read::Line)
                };
                (taken, read)
            };
            self.read.consume(taken);
            if let Some(read) = read {
                return read;
            }
        }
    }
}

impl rmcp::transport::Transport<RoleClient> for Stdio {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let lane = self.lane.clone();
        async move { lane.write(&line_of(&item)?).await }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            if self.owe_invalid {
                let answer =
                    TxJsonRpcMessage::<RoleClient>::error(ErrorData::invalid_request("Invalid request", None), None);
                self.lane.write(&line_of(&answer).ok()?).await.ok()?;
                self.owe_invalid = false;
            }
            match self.read_line().await {
                Read::Line => {}
                Read::Oversized => {
                    tracing::error!("the server sent a message longer than {MAX_LINE} bytes; it was dropped");
                    continue;
                }
                Read::End => {
                    self.lane.close();
                    return None;
                }
            }
            let line = std::mem::take(&mut self.line);
            let message = {
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
                if text.is_empty() || self.lane.take(text) {
                    None
                } else {
                    Some(parse(text))
                }
            };
            // The buffer's room is kept for the next line.
            self.line = line;
            self.line.clear();
            match message {
                None | Some(Parsed::Ignored) => continue,
                Some(Parsed::Message(message)) => return Some(*message),
                Some(Parsed::Invalid) => self.owe_invalid = true,
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.lane.write.lock().await.take();
        self.lane.close();
        Ok(())
    }
}

/// A message as one line of stdio.
fn line_of(message: &TxJsonRpcMessage<RoleClient>) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

enum Parsed {
    Message(Box<RxJsonRpcMessage<RoleClient>>),
    /// Not JSON, or a notification we do not know: nothing to answer.
    Ignored,
    /// JSON of no known message shape, with an id: answered Invalid Request.
    Invalid,
}

fn parse(text: &[u8]) -> Parsed {
    match serde_json::from_slice(text) {
        Ok(message) => Parsed::Message(Box::new(message)),
        Err(e) => {
            let value = match serde_json::from_slice::<serde_json::Value>(text) {
                Ok(value) => value,
                Err(_) => {
                    tracing::debug!("ignored a line of the server's stdout that is not JSON: {e}");
                    return Parsed::Ignored;
                }
            };
            if value.get("id").is_none() {
                // A notification of another protocol or a newer version.
                tracing::trace!("ignored a notification: {e}");
                Parsed::Ignored
            } else {
                tracing::debug!("the server sent a message of no known shape: {e}");
                Parsed::Invalid
            }
        }
    }
}

/// The calls the gateway sends past rmcp on one stdio connection.
pub struct RawLane {
    write: Arc<tokio::sync::Mutex<Option<Writer>>>,
    /// Calls waiting, by number: where their lines go.
    calls: Mutex<HashMap<u64, mpsc::UnboundedSender<Vec<u8>>>>,
    /// How many calls wait: while none do, lines go to rmcp unread.
    waiting: AtomicUsize,
    next: AtomicU64,
    /// The server's stdout ended: no call can be answered.
    closed: AtomicBool,
}

/// What a line says about its place: its id and method, and the progress
/// token of a notification. Everything else is skipped unread.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<PeekParams<'a>>,
}

#[derive(Deserialize)]
struct PeekParams<'a> {
    #[serde(borrow, default, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// The number of a lane id written as JSON (`"mm-raw-N"`).
fn number(raw: &RawValue) -> Option<u64> {
    raw.get()
        .strip_prefix('"')?
        .strip_prefix(PREFIX)?
        .strip_suffix('"')?
        .parse()
        .ok()
}

impl RawLane {
    async fn write(&self, line: &[u8]) -> std::io::Result<()> {
        let mut write = self.write.lock().await;
        let Some(write) = write.as_mut() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection is closed",
            ));
        };
        write.write_all(line).await?;
        write.flush().await
    }

    /// A line that belongs to a call in the lane goes to it: true if taken.
    fn take(&self, text: &[u8]) -> bool {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return false;
        }
        let Ok(peek) = serde_json::from_slice::<Peek>(text) else {
            return false;
        };
        let (n, last) = match (&peek.method, peek.id) {
            (None, Some(id)) => match number(id) {
                Some(n) => (n, true),
                None => return false,
            },
            (Some(method), None) if method == "notifications/progress" => {
                match peek.params.and_then(|p| p.progress_token).and_then(number) {
                    Some(n) => (n, false),
                    None => return false,
                }
            }
            _ => return false,
        };
        let mut calls = lock(&self.calls);
        if last {
            if let Some(call) = calls.remove(&n) {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                let _ = call.send(text.to_vec());
            }
        } else if let Some(call) = calls.get(&n) {
            let _ = call.send(text.to_vec());
        }
        // A line for a call that ended (its answer came, or it gave up)
        // while another waits is dropped here; with none waiting it goes to
        // rmcp, which drops an answer or progress it does not know.
        true
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut calls = lock(&self.calls);
        self.waiting.fetch_sub(calls.len(), Ordering::AcqRel);
        calls.clear();
    }

    /// Sends the request `line` writes for an id (the id as JSON, and the
    /// progress token to use if the caller wants progress), and returns the
    /// call, whose lines come as the server writes them. The request is
    /// written at once when the server's stdin takes it; otherwise (a server
    /// that does not read) a task finishes the write, whole, while
    /// [`RawCall::next`] waits for it, so the caller's deadline and
    /// cancellation still hold.
    pub async fn call(self: &Arc<Self>, line: impl FnOnce(&str) -> Vec<u8>) -> std::io::Result<RawCall> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (lines, rx) = mpsc::unbounded_channel();
        {
            let mut calls = lock(&self.calls);
            calls.insert(n, lines);
            self.waiting.fetch_add(1, Ordering::AcqRel);
        }
        let mut call = RawCall {
            n,
            id: format!("\"{PREFIX}{n}\""),
            lane: self.clone(),
            rx,
            writing: None,
        };
        // Closed after the call was registered: `close` has taken it out.
        if self.closed.load(Ordering::Acquire) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection is closed",
            ));
        }
        let mut request = line(&call.id);
        request.push(b'\n');
        let lane = self.clone();
        let mut write = Box::pin(async move { lane.write(&request).await });
        match futures_util::poll!(write.as_mut()) {
            std::task::Poll::Ready(written) => written?,
            std::task::Poll::Pending => call.writing = Some(tokio::spawn(write)),
        }
        Ok(call)
    }
}

/// A call in the lane; dropped, lines that still come for it are dropped.
pub struct RawCall {
    n: u64,
    /// Its id as JSON (a string).
    id: String,
    lane: Arc<RawLane>,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    /// The request, still being written (the server's stdin was full).
    writing: Option<JoinHandle<std::io::Result<()>>>,
}

impl RawCall {
    /// Its id, as the server sees it.
    pub fn id(&self) -> &str {
        // Within the quotes of the JSON string.
        &self.id[1..self.id.len() - 1]
    }

    /// The next line for the call: progress, then the answer (the last);
    /// None when the connection ended first.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(writing) = &mut self.writing {
            // Awaited by reference: a caller that gives up leaves the task
            // to finish the write.
            if !matches!(writing.await, Ok(Ok(()))) {
                self.writing = None;
                return None;
            }
            self.writing = None;
        }
        self.rx.recv().await
    }
}

impl Drop for RawCall {
    fn drop(&mut self) {
        if lock(&self.lane.calls).remove(&self.n).is_some() {
            self.lane.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::transport::Transport as _;
    use tokio::io::AsyncReadExt as _;

    /// A lane over in-memory pipes: what it writes, and where to write the
    /// server's lines.
    fn pair() -> (Stdio, Arc<RawLane>, tokio::io::DuplexStream, tokio::io::DuplexStream) {
        let (server_out, ours_in) = tokio::io::duplex(1 << 16);
        let (ours_out, server_in) = tokio::io::duplex(1 << 16);
        let (stdio, lane) = connect(ours_in, ours_out);
        (stdio, lane, server_out, server_in)
    }

    async fn read_line(from: &mut tokio::io::DuplexStream) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8];
        while from.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[tokio::test]
    async fn a_call_in_the_lane_gets_its_progress_and_answer_and_rmcp_the_rest() {
        let (mut stdio, lane, mut server_out, mut server_in) = pair();
        let mut call = lane
            .call(|id| {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"x"}}}}"#).into_bytes()
            })
            .await
            .unwrap();
        assert_eq!(call.id(), "mm-raw-1");
        let sent = read_line(&mut server_in).await;
        assert!(sent.contains(r#""id":"mm-raw-1""#), "{sent}");
        server_out
            .write_all(
                concat!(
                    r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"mm-raw-1","progress":1}}"#,
                    "\n",
                    r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}"#,
                    "\r\n",
                    "not json\n",
                    "\n",
                    r#"{"result":{"content":[]},"jsonrpc":"2.0","id":"mm-raw-1"}"#,
                    "\n",
                    r#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
                    "\n",
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let rmcp_got = stdio.receive().await.unwrap();
        assert!(
            serde_json::to_string(&rmcp_got)
                .unwrap()
                .contains("notifications/message"),
            "the log message is rmcp's"
        );
        let rmcp_got = stdio.receive().await.unwrap();
        assert!(serde_json::to_string(&rmcp_got).unwrap().contains(r#""id":7"#));
        let progress = String::from_utf8(call.next().await.unwrap()).unwrap();
        assert!(progress.contains("notifications/progress"), "{progress}");
        let answer = String::from_utf8(call.next().await.unwrap()).unwrap();
        assert!(answer.starts_with(r#"{"result""#), "{answer}");
        assert!(call.next().await.is_none(), "the answer is the last line");
        assert_eq!(lane.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn the_end_of_stdout_ends_every_call_and_refuses_new_ones() {
        let (mut stdio, lane, server_out, _server_in) = pair();
        let mut call = lane.call(|id| format!("{{\"id\":{id}}}").into_bytes()).await.unwrap();
        drop(server_out);
        assert!(stdio.receive().await.is_none());
        assert!(call.next().await.is_none());
        assert!(lane.call(|id| id.as_bytes().to_vec()).await.is_err());
        assert_eq!(lane.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_late_line_of_a_dropped_call_goes_nowhere() {
        let (mut stdio, lane, mut server_out, _server_in) = pair();
        let call = lane.call(|id| format!("{{\"id\":{id}}}").into_bytes()).await.unwrap();
        let keep = lane.call(|id| format!("{{\"id\":{id}}}").into_bytes()).await.unwrap();
        drop(call);
        server_out
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":\"mm-raw-1\",\"result\":{}}\n{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n")
            .await
            .unwrap();
        let got = stdio.receive().await.unwrap();
        assert!(
            serde_json::to_string(&got).unwrap().contains(r#""id":3"#),
            "the late answer was not rmcp's"
        );
        drop(keep);
        assert_eq!(lane.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn long_lines_are_dropped_and_odd_messages_answered() {
        let (mut stdio, _lane, mut server_out, mut server_in) = pair();
        let writer = tokio::spawn(async move {
            let long = vec![b'x'; MAX_LINE + 10];
            server_out.write_all(&long).await.unwrap();
            server_out
                .write_all(b"\n{\"jsonrpc\":\"2.0\",\"id\":1,\"what\":true}\n")
                .await
                .unwrap();
            server_out
                .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n")
                .await
                .unwrap();
            server_out
        });
        let got = stdio.receive().await.unwrap();
        assert!(serde_json::to_string(&got).unwrap().contains(r#""id":2"#));
        let answer = read_line(&mut server_in).await;
        assert!(answer.contains("-32600"), "{answer}");
        drop(writer.await.unwrap());
    }
}
