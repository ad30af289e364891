//! A small HTTP/1.1 proxy for test harnesses whose client cannot send a
//! bearer token (the conformance suite): it adds `Authorization` to every
//! request and passes everything else through byte for byte, streams
//! included. Not an option that turns auth off: the service under test runs
//! exactly as users run it.
//!
//! An `Origin` that names the proxy is rewritten to name the service (the
//! browser-origin check compares ports); any other `Origin` or `Host` goes
//! through unchanged, so the service's DNS-rebinding checks are still tested.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct HeaderProxy {
    pub(crate) port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HeaderProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HeaderProxy {
    /// Listens on 127.0.0.1 and forwards to `target` with `header` added.
    pub(crate) async fn start(target: SocketAddr, header: String) -> HeaderProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let header = header.clone();
                tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(target).await {
                        let _ = relay(client, upstream, &header, port, target.port()).await;
                    }
                });
            }
        });
        HeaderProxy { port, task }
    }
}

async fn relay(client: TcpStream, upstream: TcpStream, header: &str, own: u16, target: u16) -> std::io::Result<()> {
    let (client_read, mut client_write) = client.into_split();
    let (upstream_read, mut upstream_write) = upstream.into_split();
    // Answers go back untouched (SSE streams included).
    let back = tokio::spawn(async move {
        let mut upstream_read = upstream_read;
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut reader = BufReader::new(client_read);
    loop {
        // One request head, then its body by Content-Length (keep-alive).
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                back.abort();
                return Ok(());
            }
            let end = line == "\r\n" || line == "\n";
            head.push(line);
            if end {
                break;
            }
        }
        let mut length = 0usize;
        let mut chunked = false;
        let mut out = String::new();
        for line in &head {
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            if lower.starts_with("origin:") {
                let own_origin = format!(":{own}");
                if let Some(value) = line.split_once(':').map(|(_, v)| v.trim())
                    && value.ends_with(&own_origin)
                {
                    let rewritten = format!("{}:{target}", &value[..value.len() - own_origin.len()]);
                    out.push_str(&format!("Origin: {rewritten}\r\n"));
                    continue;
                }
            }
            if line == "\r\n" || line == "\n" {
                out.push_str(header);
                out.push_str("\r\n");
            }
            out.push_str(line);
        }
        upstream_write.write_all(out.as_bytes()).await?;
        if chunked {
            // Rare for these clients: pass the rest of the connection through.
            tokio::io::copy(&mut reader, &mut upstream_write).await?;
            return Ok(());
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        upstream_write.write_all(&body).await?;
    }
}
