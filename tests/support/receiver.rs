//! A real HTTP receiver on 127.0.0.1:0 (axum, on its own thread and runtime) that records
//! every request and answers as told: a status, an optional `Retry-After`, a delay.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request as the receiver saw it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Headers, names lower-case (last value wins).
    pub headers: HashMap<String, String>,
    /// The exact body bytes.
    pub body: Bytes,
    /// The status answered.
    pub status: u16,
    /// When the request arrived.
    pub arrived: Instant,
    /// When the answer was decided (after any delay).
    pub answered: Instant,
}

impl Request {
    /// A header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Whether its Standard Webhooks signature verifies with `secret`.
    pub fn signed_by(&self, secret: &str) -> bool {
        walhook::delivery::verify(
            secret,
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            &self.body,
            self.header("webhook-signature"),
        )
    }

    /// Whether the receiver accepted it.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, Clone)]
struct Behaviour {
    status: u16,
    /// Requests whose body contains the bytes get the status instead.
    rules: Vec<(Vec<u8>, u16)>,
    retry_after: Option<String>,
    delay: Duration,
    /// Delay drawn uniformly from `[0, delay]` instead of exactly `delay`.
    jitter: bool,
}

struct Inner {
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<Request>>,
    arrived: AtomicUsize,
    in_flight: AtomicUsize,
}

/// The receiver; stops on drop.
pub struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver that answers 200 at once.
    pub fn start() -> Receiver {
        let inner = Arc::new(Inner {
            behaviour: Mutex::new(Behaviour {
                status: 200,
                rules: Vec::new(),
                retry_after: None,
                delay: Duration::ZERO,
                jitter: false,
            }),
            log: Mutex::new(Vec::new()),
            arrived: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = inner.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind receiver");
                addr_tx.send(listener.local_addr().expect("addr")).ok();
                let app = Router::new().fallback(handle).with_state(state);
                // Not a graceful shutdown: requests held in a long delay must not keep
                // the test waiting.
                tokio::select! {
                    r = axum::serve(listener, app) => r.expect("receiver"),
                    _ = stop_rx => {}
                }
            });
            // Requests still held in a delay are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver did not start");
        Receiver {
            addr,
            inner,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer every later request with `status` (and no `Retry-After`).
    pub fn set_status(&self, status: u16) {
        let mut b = self.inner.behaviour.lock().unwrap();
        b.status = status;
        b.retry_after = None;
    }

    /// Answer later requests whose body contains `needle` with `status` (an empty needle
    /// clears every such rule).
    pub fn set_status_for(&self, needle: &str, status: u16) {
        let mut b = self.inner.behaviour.lock().unwrap();
        if needle.is_empty() {
            b.rules.clear();
        } else {
            b.rules.push((needle.as_bytes().to_vec(), status));
        }
    }

    /// Answer every later request with `status` and `Retry-After: {retry_after}`.
    pub fn set_retry_after(&self, status: u16, retry_after: &str) {
        let mut b = self.inner.behaviour.lock().unwrap();
        b.status = status;
        b.retry_after = Some(retry_after.to_owned());
    }

    /// Hold every later request for `delay` (a random part of it with `jitter`) before answering.
    pub fn set_delay(&self, delay: Duration, jitter: bool) {
        let mut b = self.inner.behaviour.lock().unwrap();
        b.delay = delay;
        b.jitter = jitter;
    }

    /// Every request answered so far, in the order answered.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.log.lock().unwrap().clone()
    }

    /// Accepted (2xx) requests, in the order answered.
    pub fn delivered(&self) -> Vec<Request> {
        self.requests().into_iter().filter(Request::ok).collect()
    }

    /// Requests that arrived (answered or not).
    pub fn arrived(&self) -> usize {
        self.inner.arrived.load(Ordering::SeqCst)
    }

    /// Requests arrived and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Polls until `done(requests)` holds, or panics after `timeout` saying `what`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if done(&reqs) {
                return reqs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} ({} requests so far)",
                reqs.len()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    inner.arrived.fetch_add(1, Ordering::SeqCst);
    inner.in_flight.fetch_add(1, Ordering::SeqCst);
    let behaviour = inner.behaviour.lock().unwrap().clone();
    let delay = if behaviour.jitter {
        behaviour.delay.mul_f64(fastrand::f64())
    } else {
        behaviour.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let headers_map = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let status = behaviour
        .rules
        .iter()
        .find(|(needle, _)| body.windows(needle.len()).any(|w| w == needle.as_slice()))
        .map_or(behaviour.status, |(_, s)| *s);
    // Logged before the answer leaves, so "confirmed ⇒ logged as delivered" is a sound check.
    inner.log.lock().unwrap().push(Request {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: headers_map,
        body,
        status,
        arrived,
        answered: Instant::now(),
    });
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    match behaviour.retry_after {
        Some(ra) => (status, [("retry-after", ra)]).into_response(),
        None => status.into_response(),
    }
}
