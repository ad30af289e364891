//! Plain `application/json` answers for requests of a gateway session.
//!
//! rmcp answers every request of a (2025-era) session with an SSE stream,
//! even a call that has nothing to stream: a priming event, then the result.
//! A client then parses an event stream for every reply, which costs it more
//! than the rest of the call (the TypeScript SDK: about 200 µs). When the
//! first message of the stream is the answer itself, and the client accepts
//! JSON, the answer goes back as one JSON body instead. A stream whose first
//! message is anything else (progress, a log message, a server request) is
//! passed on as it is, with what was read of it in front.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;

/// Past this much stream before the first message, give up and stream.
const MAX_PEEK: usize = 64 * 1024;

/// An answer that takes longer than this is streamed as it comes (headers
/// go out now), so that a long call keeps its connection visibly alive
/// (rmcp's keep-alive comments) for proxies and clients with header
/// timeouts.
pub(super) const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// What the start of an event stream holds.
#[derive(Debug, PartialEq)]
pub enum Start {
    /// The first message (the `data` of the first event that has any) is a
    /// JSON-RPC response: the whole answer.
    Answer(String),
    /// The first message is something else: stream.
    Other,
    /// No complete event with data yet.
    Incomplete,
}

/// The top-level keys of a JSON-RPC message (values skipped, not built).
#[derive(serde::Deserialize)]
struct Shape {
    method: Option<serde::de::IgnoredAny>,
    id: Option<serde::de::IgnoredAny>,
    result: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

/// Reads the events at the start of `text` (SSE framing: events end with a
/// blank line; `data:` lines are joined with newlines; comments and events
/// without data, such as rmcp's priming event, are skipped).
pub fn first_message(text: &str) -> Start {
    let text = if text.contains('\r') {
        std::borrow::Cow::Owned(text.replace("\r\n", "\n"))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    let mut rest = text.as_ref();
    while let Some(end) = rest.find("\n\n") {
        let event = &rest[..end];
        rest = &rest[end + 2..];
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let data = data.join("\n");
        if data.trim().is_empty() {
            continue;
        }
        let answer = serde_json::from_str::<Shape>(&data)
            .is_ok_and(|m| m.method.is_none() && m.id.is_some() && (m.result.is_some() || m.error.is_some()));
        return if answer { Start::Answer(data) } else { Start::Other };
    }
    Start::Incomplete
}

/// `response` as one JSON body if its event stream starts with the answer;
/// else the stream, unchanged.
pub async fn answer_as_json(response: Response) -> Response {
    let streams = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if response.status() != StatusCode::OK || !streams {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let mut read: Vec<Bytes> = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let until = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        // Whole characters only: a chunk may end inside one.
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        match first_message(text) {
            Start::Answer(json) => {
                parts
                    .headers
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                parts.headers.remove(header::CACHE_CONTROL);
                parts.headers.remove("x-accel-buffering");
                parts.headers.remove(header::TRANSFER_ENCODING);
                return Response::from_parts(parts, Body::from(json));
            }
            Start::Other => break,
            Start::Incomplete if bytes.len() > MAX_PEEK => break,
            Start::Incomplete => {}
        }
        match tokio::time::timeout_at(until, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                bytes.extend_from_slice(&chunk);
                read.push(chunk);
            }
            // Ended, failed, or slow: pass on what there was, and the rest.
            _ => break,
        }
    }
    let rest = futures_util::stream::iter(read.into_iter().map(Ok::<_, axum::Error>)).chain(stream);
    Response::from_parts(parts, Body::from_stream(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primed_answer_is_the_answer() {
        let text = "data: \nid: 0/0\nretry: 3000\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\nid: 1/0\n\n";
        assert_eq!(
            first_message(text),
            Start::Answer("{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}".into())
        );
        let error = "data: {\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":1,\"message\":\"m\"}}\r\n\r\n";
        assert!(matches!(first_message(error), Start::Answer(_)));
    }

    #[test]
    fn a_notification_or_request_first_means_stream() {
        let progress = "data: \n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n";
        assert_eq!(first_message(progress), Start::Other);
        let request = "data: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n";
        assert_eq!(first_message(request), Start::Other);
    }

    #[test]
    fn partial_events_wait_for_more() {
        assert_eq!(first_message(""), Start::Incomplete);
        assert_eq!(
            first_message("data: \nid: 0/0\n\ndata: {\"jsonrpc\""),
            Start::Incomplete
        );
        assert_eq!(first_message(": keep-alive\n\n"), Start::Incomplete);
    }

    #[test]
    fn data_lines_are_joined() {
        let text = "data: {\"jsonrpc\":\"2.0\",\ndata: \"id\":1,\"result\":{}}\n\n";
        assert_eq!(
            first_message(text),
            Start::Answer("{\"jsonrpc\":\"2.0\",\n\"id\":1,\"result\":{}}".into())
        );
    }
}
