//! A minimal HTTP/1.1 server for scrapes: `GET /metrics` (and `/` pointing to it), one request per
//! connection, a bounded request head, a read and a write timeout and a cap on connections served at
//! once, so a misbehaving client (one that never sends, or never reads) costs little and not for long.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use log::debug;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{Metrics, text::CONTENT_TYPE};

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;

/// What one client may cost the metrics server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client has to send its request.
    pub read_timeout: Duration,
    /// How long a client has to take the answer.
    pub write_timeout: Duration,
    /// Scrapes served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { read_timeout: Duration::from_secs(5), write_timeout: Duration::from_secs(10), max_connections: 16 }
    }
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with(listener, metrics, Limits::default()).await;
}

pub async fn serve_with(listener: TcpListener, metrics: Arc<Metrics>, limits: Limits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics, limits).await {
                debug!("metrics: {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request head too long"));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    metrics: &Metrics,
    limits: Limits,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(limits.read_timeout, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))??;
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, metrics.render()),
        ("GET" | "HEAD", "/") => {
            ("200 OK", "text/plain; charset=utf-8", "flowgate-agent: metrics at /metrics\n".to_owned())
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found: try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_owned()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let answer = async {
        stream.write_all(header.as_bytes()).await?;
        if method != "HEAD" {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    tokio::time::timeout(limits.write_timeout, answer)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the answer was not taken in time"))?
}

/// `GET path` on `addr`: the body of a 200 answer, else an error with the status line (for tests).
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body.to_owned())
    } else {
        Err(std::io::Error::other(status.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use flowgate_events::hub::{Hub, HubConfig};

    use super::*;
    use crate::state::{AgentInfo, AgentState};

    async fn server(limits: Limits) -> SocketAddr {
        let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
        let metrics = Metrics::new(state, None, super::super::flows::Caps::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, metrics, limits));
        addr
    }

    const SHORT: Limits = Limits {
        read_timeout: Duration::from_millis(200),
        write_timeout: Duration::from_millis(200),
        max_connections: 2,
    };

    /// A client that connects and says nothing is closed at the read timeout.
    #[tokio::test]
    async fn a_silent_client_is_closed_at_the_read_timeout() {
        let addr = server(SHORT).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "closed without an answer: {read:?}");
    }

    /// A client that asks and then never reads the answer is given up at the write timeout. (An
    /// in-memory pipe of 64 bytes stands in for a socket whose buffers are full.)
    #[tokio::test]
    async fn a_client_that_never_reads_is_given_up_at_the_write_timeout() {
        let state = AgentState::new(AgentInfo::default(), Hub::new(HubConfig::default()));
        let metrics = Metrics::new(state, None, super::super::flows::Caps::default());
        let (mut client, server_side) = tokio::io::duplex(64);
        client.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let served = tokio::time::timeout(Duration::from_secs(5), handle(server_side, &metrics, SHORT)).await;
        let err = served.expect("handle returns").expect_err("the answer was never taken");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "given up at the write timeout");
        drop(client);
    }

    /// Silent clients holding every connection slot delay a scrape only until their read timeout.
    #[tokio::test]
    async fn silent_clients_cannot_hold_the_connection_slots() {
        let addr = server(SHORT).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let scrape = tokio::time::timeout(Duration::from_secs(5), get(addr, "/metrics")).await;
        let body = scrape.expect("served once the silent ones time out").expect("a 200 answer");
        assert!(body.contains("flowgate_"), "{body}");
    }
}
