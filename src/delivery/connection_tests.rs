//! The HTTP layer against real servers on 127.0.0.1: keep-alive, reconnects, the drain
//! limit, timeouts and TLS. Raw servers where the test needs a misbehaving peer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::client::Client;
use super::connection::{self, Connection, HttpError};
use super::outcome::{Reason, Verdict};
use super::{Ack, Dispatcher, Job};
use crate::config::{DeliverySpec, RetrySettings, TableName, Trigger, TriggerId};

/// A CA and a certificate for `localhost` / 127.0.0.1 it signed (valid until 2126); test only.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBmjCCAUGgAwIBAgIUa6ceJkLDcOL9DKFlLvKEex3CAmwwCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPd2FsaG9vayB0ZXN0IENBMCAXDTI2MTIwMTE3MjUwOFoYDzIx\n\
MjYxMTA3MTcyNTA4WjAaMRgwFgYDVQQDDA93YWxob29rIHRlc3QgQ0EwWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAAQZRjWgy3RKzYxC7BjNe2fEXLh3SdNnzwACB7Pn\n\
eFSHjM6ynnXJYNn5wh1uPVLsrVWYH7Uz7Fm0P5EDEdgGmgaCo2MwYTAdBgNVHQ4E\n\
FgQU4N4XlHKniBaUp2rjQzQ5tmZp2JUwHwYDVR0jBBgwFoAU4N4XlHKniBaUp2rj\n\
QzQ5tmZp2JUwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAgQwCgYIKoZI\n\
zj0EAwIDRwAwRAIgImpLMbk2V3k8qS4Wtyr1DGfKTeGAPtAiVSafIv9MRvMCIG+u\n\
hC54tBbDoGHQDa/1mqUYIZNdRpVTKh573eUBnAHf\n\
-----END CERTIFICATE-----";
const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBxjCCAWugAwIBAgIURo9ldm7/l7JQDbvNe3UNZNO0e08wCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPd2FsaG9vayB0ZXN0IENBMCAXDTI2MTIwMTE3MjUwOFoYDzIx\n\
MjYxMTA3MTcyNTA4WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAAS4bddmsaPI1RcJj8N3XWBR6Mm/rlSu3jmevrjWwxEBn4vN\n\
hFG6eK/0mH+aQer1tUKSzmogULQ9D479arnqOgN+o4GSMIGPMAwGA1UdEwEB/wQC\n\
MAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQT\n\
MBGCCWxvY2FsaG9zdIcEfwAAATAdBgNVHQ4EFgQU29B0as39EOu+xcxKL9JQw8pk\n\
+nAwHwYDVR0jBBgwFoAU4N4XlHKniBaUp2rjQzQ5tmZp2JUwCgYIKoZIzj0EAwID\n\
SQAwRgIhAJ3vfiGzhcGxuMTfMul2WHYbtB+xiNqIgefcr+73hATyAiEAqp3lOZGo\n\
fNKiDwmW5ECga3/JxxdxsLW2QAZ5gFO3yFg=\n\
-----END CERTIFICATE-----";
const LEAF_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+ju/KyGqjSAQ2CUV\n\
SoM18qJRhnv9VC20V+lwjzOBzqWhRANCAAS4bddmsaPI1RcJj8N3XWBR6Mm/rlSu\n\
3jmevrjWwxEBn4vNhFG6eK/0mH+aQer1tUKSzmogULQ9D479arnqOgN+\n\
-----END PRIVATE KEY-----";

// ---------------------------------------------------------------- raw servers

/// What a raw server does with request number `n` of a connection.
enum Answer {
    /// Write these bytes, keep reading requests.
    Write(Vec<u8>),
    /// Write these bytes, then close the connection.
    WriteAndClose(Vec<u8>),
    /// Write these bytes, then hold the connection open without reading or writing.
    WriteAndHang(Vec<u8>),
    /// Close the connection without answering (an idle timeout that raced the request).
    Close,
}

fn ok_empty() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()
}

type Decide = dyn Fn(usize) -> Answer + Send + Sync;

/// A server that counts its connections and answers each request as `decide` says.
struct Raw {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn raw(decide: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let decide: Arc<Decide> = Arc::new(decide);
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, AtomicOrdering::SeqCst);
            tokio::spawn(serve(stream, decide.clone(), r.clone()));
        }
    });
    Raw {
        addr,
        connections,
        requests,
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    decide: Arc<Decide>,
    requests: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut n = 0;
    while read_request(&mut stream, &mut buf).await.is_some() {
        requests.fetch_add(1, AtomicOrdering::SeqCst);
        let answer = decide(n);
        n += 1;
        let (bytes, close, hang) = match answer {
            Answer::Close => return,
            Answer::Write(b) => (b, false, false),
            Answer::WriteAndClose(b) => (b, true, false),
            Answer::WriteAndHang(b) => (b, false, true),
        };
        if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        if hang {
            std::future::pending::<()>().await;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads one request (head and `content-length` body); `None` at EOF.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            let total = end + 4 + len;
            while buf.len() < total {
                read_more(s, buf).await?;
            }
            buf.drain(..total);
            return Some(head);
        }
        read_more(s, buf).await?;
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

// ---------------------------------------------------------------- helpers

fn client(url: &str, timeout: Duration) -> Client {
    let tls = connection::tls_config().unwrap();
    client_with(url, timeout, &tls)
}

fn client_with(url: &str, timeout: Duration, tls: &Arc<rustls::ClientConfig>) -> Client {
    let url = url::Url::parse(url).unwrap();
    let mut spec = DeliverySpec::new(url);
    spec.timeout = timeout;
    Client::new("test", &spec, tls).unwrap()
}

const SECOND: Duration = Duration::from_secs(1);

fn body() -> Bytes {
    Bytes::from_static(br#"{"a":1}"#)
}

fn target(url: &str, concurrency: usize) -> Trigger {
    let url = url::Url::parse(url).unwrap();
    let mut t = Trigger::new(0, "test", TableName::new("public", "t"), url);
    let d = &mut t.delivery;
    d.timeout = Duration::from_secs(5);
    d.retry = RetrySettings {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..RetrySettings::default()
    };
    d.concurrency = std::num::NonZeroUsize::new(concurrency).unwrap();
    t
}

const T0: TriggerId = TriggerId::FIRST;

fn ack(i: u64) -> Ack {
    Ack { session: 0, txn: i }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_keeps_one_connection_for_many_requests() {
    let peers = Arc::new(Mutex::new(Vec::<SocketAddr>::new()));
    let app = Router::new()
        .fallback(
            |ConnectInfo(peer): ConnectInfo<SocketAddr>,
             State(peers): State<Arc<Mutex<Vec<SocketAddr>>>>| async move {
                peers.lock().unwrap().push(peer);
                StatusCode::NO_CONTENT
            },
        )
        .with_state(peers.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let (tx, mut acks) = mpsc::unbounded_channel();
    let d = Dispatcher::start(&[target(&format!("http://{addr}/hook"), 2)], tx).unwrap();
    for i in 0..50 {
        let job = Job {
            id: format!("evt_{i}"),
            body: body(),
            order_key: i,
            txn: ack(i),
            shape: None,
        };
        d.submit(T0, job).await;
    }
    for _ in 0..50 {
        tokio::time::timeout(5 * SECOND, acks.recv()).await.unwrap();
    }
    let peers = peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 50);
    let mut distinct = peers.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "one connection per lane: {distinct:?}");
    d.shutdown(SECOND).await;
}

#[tokio::test]
async fn connection_close_and_an_idle_close_are_followed_by_a_new_connection() {
    // Every connection carries one request: the first by `connection: close`, the second by
    // a silent close after the answer (an idle timeout on the server).
    let server = raw(|_| {
        Answer::WriteAndClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
        )
    })
    .await;
    let c = client(&format!("http://{}/", server.addr), 5 * SECOND);
    let mut conn = Connection::new();
    for _ in 0..3 {
        let a = c.send(&mut conn, "evt", body(), None).await;
        assert_eq!(a.verdict, Verdict::Delivered, "{:?}", a.error);
        assert!(!conn.is_open(), "closed after connection: close");
    }
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 3);

    let server = raw(|_| Answer::WriteAndClose(ok_empty())).await;
    let c = client(&format!("http://{}/", server.addr), 5 * SECOND);
    for _ in 0..3 {
        let a = c.send(&mut conn, "evt", body(), None).await;
        assert_eq!(a.verdict, Verdict::Delivered, "{:?}", a.error);
        // Let the FIN arrive: the next request must notice it before writing, not fail.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 3);
    assert_eq!(
        server.requests.load(AtomicOrdering::SeqCst),
        3,
        "no retries"
    );

    // A lane waiting for work notices the close by itself and lets the socket go.
    assert!(conn.is_open(), "not polled since the answer");
    tokio::time::timeout(SECOND, conn.closed()).await.unwrap();
    assert!(!conn.is_open());
}

#[tokio::test]
async fn a_keep_alive_connection_closed_under_a_request_is_replaced_at_once() {
    // Each connection answers its first request and closes under its second, as a server
    // whose idle timeout fires just as the request arrives.
    let server = raw(|n| {
        if n == 0 {
            Answer::Write(ok_empty())
        } else {
            Answer::Close
        }
    })
    .await;
    let c = client(&format!("http://{}/", server.addr), 5 * SECOND);
    let mut conn = Connection::new();
    let a = c.send(&mut conn, "evt_1", body(), None).await;
    assert_eq!(a.verdict, Verdict::Delivered, "{:?}", a.error);
    let started = std::time::Instant::now();
    let a = c.send(&mut conn, "evt_2", body(), None).await;
    assert_eq!(
        a.verdict,
        Verdict::Delivered,
        "sent again on a new connection, not failed into the backoff: {:?}",
        a.error
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 2);
    assert_eq!(server.requests.load(AtomicOrdering::SeqCst), 3);
    // A fresh connection that closes under its request is a failure (no loop).
    let server = raw(|_| Answer::Close).await;
    let c = client(&format!("http://{}/", server.addr), 5 * SECOND);
    let mut conn = Connection::new();
    let a = c.send(&mut conn, "evt", body(), None).await;
    assert_ne!(a.verdict, Verdict::Delivered);
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_over_the_drain_limit_drops_the_connection_but_not_the_status() {
    let big = 1024 * 1024;
    let count = AtomicUsize::new(0);
    let server = raw(move |_| {
        let n = count.fetch_add(1, AtomicOrdering::SeqCst);
        let mut answer = match n % 2 {
            // Declared length over the limit.
            0 => format!("HTTP/1.1 200 OK\r\ncontent-length: {big}\r\n\r\n").into_bytes(),
            // Chunked, so only reading tells.
            _ => b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
        };
        if n % 2 == 0 {
            answer.extend(std::iter::repeat_n(b'x', big));
        } else {
            for _ in 0..32 {
                answer.extend(b"8000\r\n");
                answer.extend(std::iter::repeat_n(b'x', 0x8000));
                answer.extend(b"\r\n");
            }
            answer.extend(b"0\r\n\r\n");
        }
        Answer::Write(answer)
    })
    .await;
    let c = client(&format!("http://{}/", server.addr), 5 * SECOND);
    let mut conn = Connection::new();
    let a = c.send(&mut conn, "evt", body(), None).await;
    assert_eq!(a.verdict, Verdict::Delivered);
    assert!(!conn.is_open());
    // The server's next request would have been on the same connection: it is a new one.
    let a = c.send(&mut conn, "evt", body(), None).await;
    assert_eq!(
        a.verdict,
        Verdict::Retry(Reason::ServerError),
        "{:?}",
        a.error
    );
    assert!(!conn.is_open());
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 2);

    // A small body is drained and the connection kept.
    let server =
        raw(|_| Answer::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nthanks".to_vec()))
            .await;
    let c = client(&format!("http://{}/", server.addr), 5 * SECOND);
    let mut conn = Connection::new();
    for _ in 0..3 {
        assert_eq!(
            c.send(&mut conn, "e", body(), None).await.verdict,
            Verdict::Delivered
        );
        assert!(conn.is_open());
    }
    assert_eq!(server.connections.load(AtomicOrdering::SeqCst), 1);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = raw(|_| Answer::WriteAndHang(vec![])).await;
    let c = client(
        &format!("http://{}/", server.addr),
        Duration::from_millis(200),
    );
    let mut conn = Connection::new();
    let started = Instant::now();
    let a = c.send(&mut conn, "evt", body(), None).await;
    let took = started.elapsed();
    assert_eq!(a.verdict, Verdict::Retry(Reason::Timeout));
    assert!(
        matches!(a.error, Some(HttpError::Timeout(_))),
        "{:?}",
        a.error
    );
    assert!(
        took >= Duration::from_millis(200) && took < 2 * SECOND,
        "{took:?}"
    );
    assert!(!conn.is_open());

    // A head followed by a stalled body: the status stands, the connection goes.
    let server_stall =
        raw(|_| Answer::WriteAndHang(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec()))
            .await;
    let c = client(
        &format!("http://{}/", server_stall.addr),
        Duration::from_millis(200),
    );
    let a = c.send(&mut conn, "evt", body(), None).await;
    assert_eq!(a.verdict, Verdict::Delivered);
    assert!(!conn.is_open());
}

#[tokio::test]
async fn refused_connections_are_connect_errors_without_credentials() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let c = client(&format!("http://user:s3cret@{addr}/hook?token=abc"), SECOND);
    let mut conn = Connection::new();
    let a = c.send(&mut conn, "evt", body(), None).await;
    assert_eq!(a.verdict, Verdict::Retry(Reason::Connect));
    let error = a.error.unwrap();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("token"),
        "{text}"
    );
}

// ---------------------------------------------------------------- TLS

fn tls_server_config() -> Arc<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut LEAF_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut LEAF_KEY.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    // The server would prefer h2: the client must only offer http/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS server answering 200 to everything; records each connection's SNI and ALPN.
async fn tls_server() -> (
    SocketAddr,
    Arc<Mutex<Vec<(Option<String>, Option<Vec<u8>>)>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config());
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let conn = tls.get_ref().1;
            log.lock().unwrap().push((
                conn.server_name().map(str::to_owned),
                conn.alpn_protocol().map(<[u8]>::to_vec),
            ));
            let decide: Arc<Decide> = Arc::new(|_| Answer::Write(ok_empty()));
            tokio::spawn(serve(tls, decide, Arc::new(AtomicUsize::new(0))));
        }
    });
    (addr, seen)
}

fn test_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut CA_PEM.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

#[tokio::test]
async fn https_sends_sni_offers_only_http1_and_keeps_the_connection() {
    let (addr, seen) = tls_server().await;
    let tls = connection::tls_config_with(test_roots()).unwrap();
    let c = client_with(
        &format!("https://localhost:{}/hook", addr.port()),
        5 * SECOND,
        &tls,
    );
    let mut conn = Connection::new();
    for _ in 0..3 {
        let a = c.send(&mut conn, "evt", body(), None).await;
        assert_eq!(a.verdict, Verdict::Delivered, "{:?}", a.error);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(Some("localhost".to_owned()), Some(b"http/1.1".to_vec()))],
        "one TLS connection, SNI from the host, ALPN http/1.1"
    );
}

#[tokio::test]
async fn https_refuses_a_certificate_the_webpki_roots_do_not_vouch_for() {
    let (addr, _) = tls_server().await;
    let c = client(
        &format!("https://localhost:{}/hook", addr.port()),
        5 * SECOND,
    );
    let mut conn = Connection::new();
    let a = c.send(&mut conn, "evt", body(), None).await;
    assert_eq!(a.verdict, Verdict::Retry(Reason::Connect));
    assert!(
        matches!(a.error, Some(HttpError::Tls { .. })),
        "{:?}",
        a.error
    );
}

#[test]
fn the_tls_config_offers_http1_over_the_webpki_roots() {
    let config = connection::tls_config().unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
}
