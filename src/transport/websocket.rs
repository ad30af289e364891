//! MCP over WebSocket: one JSON-RPC message per text frame, subprotocol `mcp`.
//! rmcp 3.x has no WebSocket transport; this moves rmcp's messages over
//! tokio-tungstenite (rustls for `wss://`).

use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rmcp::service::{RxJsonRpcMessage, ServiceRole, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::ConnectError;

/// The subprotocol MCP over WebSocket uses.
pub const SUBPROTOCOL: &str = "mcp";

/// An rmcp transport over a WebSocket, for either side of a session.
pub struct WsTransport<S> {
    writer: Arc<tokio::sync::Mutex<SplitSink<WebSocketStream<S>, Message>>>,
    reader: SplitStream<WebSocketStream<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsTransport<S> {
    pub fn new(stream: WebSocketStream<S>) -> Self {
        let (writer, reader) = stream.split();
        WsTransport {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            reader,
        }
    }
}

/// Accepts a WebSocket connection as an MCP server would: the `mcp`
/// subprotocol is selected when the client asks for it.
// The handshake callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
) -> Result<WsTransport<S>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let select = |request: &Request, mut response: Response| {
        let asked = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        if asked {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
        }
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, select).await?;
    Ok(WsTransport::new(ws))
}

pub async fn connect(
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    tls: Arc<rustls::ClientConfig>,
) -> Result<WsTransport<MaybeTlsStream<TcpStream>>, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Permanent(format!("invalid websocket url: {e}")))?;
    let map = request.headers_mut();
    map.insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConnectError::Permanent(format!("header name `{name}` is not valid")))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| ConnectError::Permanent(format!("the value of header `{name}` is not valid")))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    let connector = Connector::Rustls(tls);
    let (stream, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
        .await
        .map_err(|e| {
            use tokio_tungstenite::tungstenite::Error;
            match &e {
                Error::Http(response) => match super::check_status(response.status()) {
                    Err(refused) => refused,
                    Ok(()) => {
                        ConnectError::Transient(format!("the websocket handshake failed: HTTP {}", response.status()))
                    }
                },
                Error::Tls(_) => ConnectError::Transient(format!("TLS: {e}")),
                _ => ConnectError::Transient(format!("websocket: {e}")),
            }
        })?;
    Ok(WsTransport::new(stream))
}

impl<R, S> Transport<R> for WsTransport<S>
where
    R: ServiceRole,
    TxJsonRpcMessage<R>: Serialize,
    RxJsonRpcMessage<R>: DeserializeOwned,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(&mut self, item: TxJsonRpcMessage<R>) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move {
            let text = serde_json::to_string(&item)?;
            writer
                .lock()
                .await
                .send(Message::text(text))
                .await
                .map_err(std::io::Error::other)
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<R>> {
        loop {
            let parsed = match self.reader.next().await?.ok()? {
                Message::Text(text) => serde_json::from_str(text.as_str()),
                Message::Binary(bytes) => serde_json::from_slice(&bytes),
                Message::Close(_) => return None,
                _ => continue,
            };
            match parsed {
                Ok(message) => return Some(message),
                Err(e) => tracing::debug!("skipping a websocket frame that is not JSON-RPC: {e}"),
            }
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let writer = self.writer.clone();
        async move {
            let _ = writer.lock().await.close().await;
            Ok(())
        }
    }
}
