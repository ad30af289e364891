//! The CLI's side of the REST API: finds the running service through the state
//! dir and talks to it on 127.0.0.1 with the bearer token.

use std::path::Path;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::service::{self, ServiceInfo};

/// No service answers for this state dir.
#[derive(Debug, thiserror::Error)]
#[error("no mcp-manager service is running for {state_dir}; start one with `mcp-manager start --config PATH`")]
pub struct NotRunning {
    pub state_dir: String,
}

pub struct ApiClient {
    pub info: ServiceInfo,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
    state_dir: String,
}

/// An answer that is not a success: the service's `{"error": ...}` message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

impl ApiClient {
    /// Finds the service of `state_dir`, or says that none runs.
    pub fn connect(state_dir: &Path) -> anyhow::Result<ApiClient> {
        let not_running = || NotRunning {
            state_dir: state_dir.display().to_string(),
        };
        let info = service::read_info(state_dir).ok_or_else(not_running)?;
        let alive = std::path::Path::new(&format!("/proc/{}", info.pid)).exists();
        if !alive {
            return Err(not_running().into());
        }
        let token = std::fs::read_to_string(service::token_path(state_dir))
            .with_context(|| format!("cannot read the API token in {}", state_dir.display()))?
            .trim()
            .to_string();
        Ok(ApiClient {
            info,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
            state_dir: state_dir.display().to_string(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let uri = format!("{}/api/v1{path}", self.info.url);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                anyhow::Error::new(NotRunning {
                    state_dir: self.state_dir.clone(),
                })
            } else {
                anyhow::anyhow!("cannot reach the service at {}: {e}", self.info.url)
            }
        })
    }

    /// A JSON request; a non-success status becomes an [`ApiFailure`].
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]
                .as_str()
                .map_or_else(|| format!("the service answered {status}"), str::to_string);
            return Err(ApiFailure { status, message }.into());
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.call(Method::POST, path, body).await
    }

    /// Reads a Server-Sent Events stream; `on_event(event, data)` returns false to stop.
    pub async fn stream(&self, path: &str, mut on_event: impl FnMut(&str, &str) -> bool) -> anyhow::Result<()> {
        let response = self.send(Method::GET, path, None).await?;
        if !response.status().is_success() {
            anyhow::bail!("the service answered {}", response.status());
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        let (mut event, mut data) = (String::new(), String::new());
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame?.into_data() else { continue };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line = buffer[..end].trim_end_matches('\r').to_string();
                buffer.drain(..=end);
                if line.is_empty() {
                    if !data.is_empty() && !on_event(&event, &data) {
                        return Ok(());
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
        }
        Ok(())
    }
}
