//! Plain HTTP/1.1 GETs against a gateway's operations endpoints (`/readyz`, `/healthz`,
//! `/metrics`), with a time limit and the failures told apart.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub enum Failed {
    /// No answer within the limit.
    Timeout,
    /// Nothing listens (the gateway is down).
    Refused,
    /// Any other failure, or an answer without a status line.
    Other(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Timeout => f.write_str("no answer in time"),
            Failed::Refused => f.write_str("connection refused"),
            Failed::Other(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Failed {}

/// `GET path` on `base` (`http://host:port`): the status and the body, within `limit`.
pub async fn get(base: &str, path: &str, limit: Duration) -> Result<(u16, String), Failed> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let exchange = async {
        let mut s = TcpStream::connect(hostport).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_string())
    };
    let text = match tokio::time::timeout(limit, exchange).await {
        Err(_) => return Err(Failed::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Failed::Refused)
        }
        Ok(Err(e)) => return Err(Failed::Other(e.to_string())),
        Ok(Ok(text)) => text,
    };
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Failed::Other("no status line".into()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The sum of a Prometheus counter over the series whose labels contain `labels`
/// (e.g. `reason="slow_consumer"`), from `/metrics` of every base.
pub async fn metric(bases: &[String], name: &str, labels: &str) -> Result<f64, Failed> {
    let mut sum = 0.0;
    for b in bases {
        let (_, text) = get(b, "/metrics", Duration::from_secs(10)).await?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
                continue;
            }
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sum += v;
            }
        }
    }
    Ok(sum)
}
