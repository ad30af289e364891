//! The legacy MCP HTTP+SSE transport (protocol 2024-11-05), which rmcp 3.x no
//! longer ships: a GET opens an event stream whose first `endpoint` event names
//! the URL to POST messages to; the server's messages arrive as `message`
//! events. Framing stays rmcp's: this only moves `JsonRpcMessage`s.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use sse_stream::{Sse, SseStream};

type Events = Pin<Box<dyn Stream<Item = Result<Sse, sse_stream::Error>> + Send>>;

pub struct SseTransport {
    client: reqwest::Client,
    post_url: reqwest::Url,
    events: Events,
}

/// Opens the event stream and waits for the `endpoint` event.
pub async fn connect(client: reqwest::Client, url: &str) -> Result<SseTransport, super::ConnectError> {
    let base = reqwest::Url::parse(url).map_err(|e| super::ConnectError::Permanent(format!("invalid url: {e}")))?;
    let response = client
        .get(base.clone())
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(|e| super::ConnectError::Transient(super::describe_reqwest(&e)))?;
    super::check_status(response.status())?;
    let mut events: Events = Box::pin(SseStream::from_bytes_stream(response.bytes_stream()));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| super::ConnectError::Transient(format!("reading the event stream: {e}")))?;
        if event.event.as_deref() == Some("endpoint") {
            let endpoint = event.data.unwrap_or_default();
            let post_url = base.join(endpoint.trim()).map_err(|e| {
                super::ConnectError::Permanent(format!("the server's endpoint event is not a URL: {e}"))
            })?;
            return Ok(SseTransport {
                client,
                post_url,
                events,
            });
        }
    }
    Err(super::ConnectError::Transient(
        "the event stream ended before the server named its message endpoint".into(),
    ))
}

impl Transport<RoleClient> for SseTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let client = self.client.clone();
        let url = self.post_url.clone();
        async move {
            let body = serde_json::to_vec(&item)?;
            let response = client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| std::io::Error::other(super::describe_reqwest(&e)))?;
            if !response.status().is_success() {
                return Err(std::io::Error::other(format!(
                    "the server answered a message with HTTP {}",
                    response.status()
                )));
            }
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let event = self.events.next().await?.ok()?;
            if !matches!(event.event.as_deref(), None | Some("message")) {
                continue;
            }
            let Some(data) = event.data else { continue };
            match serde_json::from_str(&data) {
                Ok(message) => return Some(message),
                Err(e) => tracing::debug!("skipping an SSE message that is not JSON-RPC: {e}"),
            }
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        // Dropping the event stream closes the GET.
        self.events = Box::pin(futures_util::stream::empty());
        std::future::ready(Ok(()))
    }
}
