//! `walhook health`: one HTTP GET to a status server endpoint, so a container's HEALTHCHECK
//! needs no curl or shell in the image.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long connecting and answering may take together.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why there was no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting, writing or reading failed.
    #[error("http://{addr}{path}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// Which endpoint.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No answer within [`TIMEOUT`].
    #[error("http://{addr}{path}: no answer within {}s", TIMEOUT.as_secs())]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// Which endpoint.
        path: String,
    },
    /// The answer is not HTTP.
    #[error("http://{addr}{path}: not an HTTP answer")]
    NotHttp {
        /// Where.
        addr: SocketAddr,
        /// Which endpoint.
        path: String,
    },
}

/// The status line and body of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body, trimmed (the endpoints answer one word).
    pub body: String,
}

impl Answer {
    /// 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// The address to reach a server listening on `listen` from the same host: an unspecified
/// IP (`0.0.0.0`, `[::]`) becomes loopback.
pub fn loopback(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// `GET path` on `addr` (HTTP/1.1, `Connection: close`).
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, ProbeError> {
    let io = |source| ProbeError::Io {
        addr,
        path: path.to_owned(),
        source,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        // The endpoints answer a few bytes; more than 64 KiB is not one of ours.
        (&mut stream)
            .take(64 * 1024)
            .read_to_end(&mut response)
            .await
            .map_err(io)?;
        parse(&response).ok_or_else(|| ProbeError::NotHttp {
            addr,
            path: path.to_owned(),
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ProbeError::Timeout {
            addr,
            path: path.to_owned(),
        })?
}

/// Status code and body of a complete HTTP/1.x response.
fn parse(response: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some(Answer {
        status,
        body: body.trim().to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_become_loopback() {
        let a: SocketAddr = "0.0.0.0:8187".parse().unwrap();
        assert_eq!(loopback(a).to_string(), "127.0.0.1:8187");
        let a: SocketAddr = "[::]:8187".parse().unwrap();
        assert_eq!(loopback(a).to_string(), "[::1]:8187");
        let a: SocketAddr = "10.1.2.3:8187".parse().unwrap();
        assert_eq!(loopback(a), a);
    }

    #[test]
    fn parses_status_and_body() {
        let a =
            parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 14\r\n\r\nnot streaming\n")
                .unwrap();
        assert_eq!(
            (a.status, a.body.as_str(), a.is_ok()),
            (503, "not streaming", false)
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nok\n").unwrap().is_ok());
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse(b""), None);
    }

    #[tokio::test]
    async fn asks_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let a = get(addr, "/healthz").await.unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "ok"));
        assert_eq!(get(addr, "/nope").await.unwrap().status, 404);
    }
}
