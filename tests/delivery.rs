//! Delivery against real HTTP receivers on 127.0.0.1 (no mocks): what arrives, in what order,
//! and what is acked when.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::Mac as _;
use std::num::NonZeroUsize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use walhook::config::{HttpMethod, Methods, On4xx, RetrySettings, TableName, Trigger, TriggerId};
use walhook::delivery::sign::Signer;
use walhook::delivery::{Ack, Dispatcher, Job, Shape, verify};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------- receiver

/// One request as the receiver saw it, with the status it answered.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
    status: u16,
}

impl Req {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How the receiver answers request number `n` (0-based).
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

fn status(status: u16) -> Reply {
    Reply {
        status,
        headers: vec![],
        delay: Duration::ZERO,
    }
}

type Respond = dyn Fn(usize) -> Reply + Send + Sync;

struct Inner {
    n: AtomicUsize,
    log: Mutex<Vec<Req>>,
    respond: Box<Respond>,
}

struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    fn url(&self) -> url::Url {
        format!("http://{}/hook", self.addr).parse().unwrap()
    }
    fn requests(&self) -> Vec<Req> {
        self.inner.log.lock().unwrap().clone()
    }
    fn delivered_ids(&self) -> HashSet<String> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.header("webhook-id").to_owned())
            .collect()
    }
}

async fn receiver(respond: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
    receiver_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), respond)
}

fn receiver_on(
    listener: TcpListener,
    respond: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> Receiver {
    let addr = listener.local_addr().unwrap();
    let inner = Arc::new(Inner {
        n: AtomicUsize::new(0),
        log: Mutex::new(Vec::new()),
        respond: Box::new(respond),
    });
    let app = Router::new().fallback(handle).with_state(inner.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Receiver { addr, inner, task }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = inner.n.fetch_add(1, AtomicOrdering::SeqCst);
    let reply = (inner.respond)(n);
    if !reply.delay.is_zero() {
        // Even a zero sleep waits for the next timer tick (~1 ms): skip it.
        tokio::time::sleep(reply.delay).await;
    }
    // Logged before the answer leaves, so "acked ⇒ logged as delivered" is a sound check.
    inner.log.lock().unwrap().push(Req {
        method,
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers,
        body,
        at: Instant::now(),
        status: reply.status,
    });
    let mut response = StatusCode::from_u16(reply.status).unwrap().into_response();
    for (k, v) in reply.headers {
        response.headers_mut().insert(
            HeaderName::from_static(k),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    response
}

// ---------------------------------------------------------------- helpers

fn target(url: url::Url) -> Trigger {
    let mut t = Trigger::new(0, "test", TableName::new("public", "t"), url);
    let d = &mut t.delivery;
    d.timeout = Duration::from_secs(5);
    d.retry = RetrySettings {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..RetrySettings::default()
    };
    d.concurrency = NonZeroUsize::MIN;
    t
}

/// A receiver whose first answer takes 200 ms, so the rest of the jobs are queued when the
/// lane comes back.
async fn slow_first_receiver() -> Receiver {
    receiver(|n| Reply {
        delay: if n == 0 {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        },
        ..status(200)
    })
    .await
}

fn nz(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap()
}

fn signer(secret: &str) -> Option<Signer> {
    Some(Signer::new(secret).unwrap())
}

const T0: TriggerId = TriggerId::FIRST;

fn job(i: u64) -> Job {
    Job {
        id: format!("evt_{i}"),
        body: Bytes::from(format!(r#"{{"seq":{i}}}"#)),
        order_key: i,
        txn: Ack { session: 0, txn: i },
        shape: None,
    }
}

/// Starts a dispatcher for `t`; acks arrive as their transaction numbers.
fn start(t: Trigger) -> (Dispatcher, mpsc::UnboundedReceiver<u64>) {
    let (tx, mut acks) = mpsc::unbounded_channel::<Ack>();
    let (txns, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(a) = acks.recv().await {
            if txns.send(a.txn).is_err() {
                break;
            }
        }
    });
    (Dispatcher::start(&[t], tx).unwrap(), rx)
}

/// Waits for exactly `n` acks (panics after `within`).
async fn acks(rx: &mut mpsc::UnboundedReceiver<u64>, n: usize, within: Duration) -> Vec<u64> {
    let mut got = Vec::with_capacity(n);
    tokio::time::timeout(within, async {
        while got.len() < n {
            got.push(rx.recv().await.expect("ack channel closed"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} acks within {within:?}", got.len()));
    got
}

/// Acks still arriving within `wait` (expected: none).
async fn no_more_acks(rx: &mut mpsc::UnboundedReceiver<u64>, wait: Duration) -> Vec<u64> {
    tokio::time::sleep(wait).await;
    let mut extra = vec![];
    while let Ok(a) = rx.try_recv() {
        extra.push(a);
    }
    extra
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_a_valid_signature_arrive() {
    let rx_http = receiver(|_| status(204)).await;
    let mut t = target(rx_http.url());
    t.delivery.signer = signer(SECRET);
    t.delivery.method = Methods::all(HttpMethod::Put);
    t.delivery
        .headers
        .insert("authorization", HeaderValue::from_static("Bearer t0ken"));
    let (d, mut rx) = start(t);
    d.submit(T0, job(7)).await;
    assert_eq!(acks(&mut rx, 1, Duration::from_secs(5)).await, vec![7]);

    let reqs = rx_http.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, Method::PUT);
    assert_eq!(r.path, "/hook");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.header("user-agent"),
        format!("walhook/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(r.header("authorization"), "Bearer t0ken");
    assert_eq!(r.header("webhook-id"), "evt_7");
    assert_eq!(&r.body[..], br#"{"seq":7}"#);
    let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
    assert!(ts.abs_diff(now_secs()) <= 5, "timestamp {ts} is not now");

    let sig = r.header("webhook-signature");
    assert!(verify(
        SECRET,
        "evt_7",
        r.header("webhook-timestamp"),
        &r.body,
        sig
    ));
    assert!(!verify(
        SECRET,
        "evt_8",
        r.header("webhook-timestamp"),
        &r.body,
        sig
    ));

    // Independently: HMAC-SHA256 keyed with the base64-decoded secret over id.ts.body.
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("evt_7.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(sig, format!("v1,{want}"));
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signature_header_without_a_secret() {
    let rx_http = receiver(|_| status(200)).await;
    let (d, mut rx) = start(target(rx_http.url()));
    d.submit(T0, job(1)).await;
    acks(&mut rx, 1, Duration::from_secs(5)).await;
    assert!(
        rx_http.requests()[0]
            .headers
            .get("webhook-signature")
            .is_none()
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_wrap_raw_events_in_order() {
    let rx_http = slow_first_receiver().await;
    let mut t = target(rx_http.url());
    t.delivery.batch = nz(10);
    let (d, mut rx) = start(t);
    let raw = |i: u64| format!(r#"{{"seq": {i}, "n": 1.50}}"#); // spacing and 1.50 must survive
    for i in 0..25 {
        d.submit(
            T0,
            Job {
                body: Bytes::from(raw(i)),
                order_key: 0,
                ..job(i)
            },
        )
        .await;
    }
    let mut got = acks(&mut rx, 25, Duration::from_secs(5)).await;
    got.sort_unstable();
    assert_eq!(got, (0..25).collect::<Vec<_>>());

    let reqs = rx_http.requests();
    let mut seen = vec![];
    for r in &reqs {
        let v = r.json();
        let events = v["events"].as_array().expect("{\"events\":[...]}");
        assert!(
            !events.is_empty() && events.len() <= 10,
            "{} events",
            events.len()
        );
        assert_eq!(v.as_object().unwrap().len(), 1, "only the events key");
        let first = events[0]["seq"].as_u64().unwrap();
        let id = r.header("webhook-id");
        assert!(
            id.starts_with(&format!("evt_{first}-{}-", events.len())),
            "{id}"
        );
        // Raw bytes, comma-joined: no re-serialisation.
        let want: Vec<String> = events
            .iter()
            .map(|e| raw(e["seq"].as_u64().unwrap()))
            .collect();
        assert_eq!(r.body, format!(r#"{{"events":[{}]}}"#, want.join(",")));
        seen.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
    }
    assert_eq!(seen, (0..25).collect::<Vec<_>>(), "in submit order");
    assert!(
        reqs.iter()
            .any(|r| r.json()["events"].as_array().unwrap().len() == 10),
        "full batches were formed"
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_events_of_one_shape_only() {
    let rx_http = slow_first_receiver().await;
    let mut t = target(rx_http.url());
    t.delivery.batch = nz(10);
    t.delivery.batch_linger = Duration::from_secs(1);
    let (d, mut rx) = start(t);
    // Catching up: the lane waits (up to the linger) until all ten are queued, so how they
    // are cut into requests depends on their shapes only, not on how fast they came.
    d.set_behind(true);
    // 0: the trigger's own request; 1-4: PUT /items/a; 5-6: DELETE /items/b; 7: unsendable;
    // 8-9: PUT /items/a again.
    let shape = |i: u64| -> Option<Box<Shape>> {
        let s = |method, target: &str| Shape {
            method: Some(method),
            target: Some(target.to_owned()),
            headers: vec![("x-key".to_owned(), target.to_owned())],
            unsendable: None,
        };
        match i {
            0 => None,
            1..=4 | 8 | 9 => Some(Box::new(s(HttpMethod::Put, "/items/a"))),
            5 | 6 => Some(Box::new(s(HttpMethod::Delete, "/items/b"))),
            _ => walhook::delivery::unsendable("url: `{record.x}` is null".to_owned()),
        }
    };
    for i in 0..10 {
        d.submit(
            T0,
            Job {
                order_key: 0,
                shape: shape(i),
                ..job(i)
            },
        )
        .await;
    }
    // The unsendable event is retried like a 4xx (no park store here), so it holds its
    // lane; nothing is ever sent for it.
    let mut got = acks(&mut rx, 7, Duration::from_secs(5)).await;
    got.sort_unstable();
    assert_eq!(got, (0..7).collect::<Vec<_>>());
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(500))
            .await
            .is_empty()
    );
    let shown: Vec<(String, String, String, usize)> = rx_http
        .requests()
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.clone(),
                r.header("x-key").to_owned(),
                r.json()["events"].as_array().unwrap().len(),
            )
        })
        .collect();
    let want: Vec<(String, String, String, usize)> = vec![
        ("POST".into(), "/hook".into(), "".into(), 1),
        ("PUT".into(), "/items/a".into(), "/items/a".into(), 4),
        ("DELETE".into(), "/items/b".into(), "/items/b".into(), 2),
    ];
    assert_eq!(shown, want);
    d.shutdown(Duration::from_secs(1)).await;
}

/// Submits jobs `seqs` on key 1, 3 ms apart.
async fn trickle(d: &Dispatcher, seqs: std::ops::RangeInclusive<u64>) {
    for i in seqs {
        d.submit(
            T0,
            Job {
                order_key: 1,
                ..job(i)
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Requests that carried key 1's 30 events, with `batch_linger = linger`, while lane 0 has a
/// slow request on the wire.
async fn requests_for_a_trickle_beside_a_busy_lane(linger: Duration) -> usize {
    let rx_http = receiver(|n| Reply {
        delay: if n == 0 {
            Duration::from_millis(600)
        } else {
            Duration::ZERO
        },
        ..status(200)
    })
    .await;
    let mut t = target(rx_http.url());
    t.delivery.batch = nz(50);
    t.delivery.concurrency = nz(2);
    t.delivery.batch_linger = linger;
    let (d, mut rx) = start(t);
    d.submit(
        T0,
        Job {
            order_key: 0,
            ..job(0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    trickle(&d, 1..=30).await;
    acks(&mut rx, 31, Duration::from_secs(5)).await;
    let n = rx_http
        .requests()
        .iter()
        .filter(|r| r.json()["events"][0]["seq"] != 0)
        .count();
    d.shutdown(Duration::from_secs(1)).await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_fills_requests_while_the_target_is_busy() {
    // Lane 1 waits for more while lane 0's request is on the wire: a few full requests.
    let lingering = requests_for_a_trickle_beside_a_busy_lane(Duration::from_millis(300)).await;
    assert!(lingering <= 3, "{lingering} requests for 30 events");
    // Without a linger each event goes out as it comes.
    let eager = requests_for_a_trickle_beside_a_busy_lane(Duration::ZERO).await;
    assert!(eager > 10, "{eager} requests for 30 events");
}

/// Requests a fast target gets for 30 events trickled 3 ms apart on one key, by a trigger
/// with `batch = 50` and a 300 ms linger, when the source is (or is not) catching up.
async fn requests_for_a_trickle_to_an_idle_target(behind: bool) -> usize {
    let rx_http = receiver(|_| status(200)).await;
    let mut t = target(rx_http.url());
    t.delivery.batch = nz(50);
    t.delivery.batch_linger = Duration::from_millis(300);
    let (d, mut rx) = start(t);
    d.set_behind(behind);
    trickle(&d, 0..=29).await;
    acks(&mut rx, 30, Duration::from_secs(5)).await;
    let n = rx_http.requests().len();
    d.shutdown(Duration::from_secs(1)).await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_trigger_sends_at_once_and_a_catching_up_one_fills_its_requests() {
    // Live and idle: every event goes out as it comes, the linger never waited for.
    let live = requests_for_a_trickle_to_an_idle_target(false).await;
    assert!(live > 10, "{live} requests for 30 live events");
    // Catching up with a backlog: the batch waits for more, up to the linger.
    let behind = requests_for_a_trickle_to_an_idle_target(true).await;
    assert!(behind <= 2, "{behind} requests for 30 events of a backlog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_under_concurrency_and_retries() {
    // Every 7th request fails, so lanes retry while others move on.
    let rx_http = receiver(|n| if n % 7 == 3 { status(503) } else { status(200) }).await;
    let mut t = target(rx_http.url());
    t.delivery.concurrency = nz(8);
    let (d, mut rx) = start(t);
    let keys = 50u64;
    for i in 0..1000u64 {
        let key = i % keys;
        let body = format!(r#"{{"key":{key},"seq":{i}}}"#);
        d.submit(
            T0,
            Job {
                id: format!("evt_{i}"),
                body: Bytes::from(body),
                order_key: key,
                txn: Ack { session: 0, txn: i },
                shape: None,
            },
        )
        .await;
    }
    let mut got = acks(&mut rx, 1000, Duration::from_secs(10)).await;
    got.sort_unstable();
    assert_eq!(
        got,
        (0..1000).collect::<Vec<_>>(),
        "each job acked exactly once"
    );

    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut count = 0;
    for r in rx_http.requests().iter().filter(|r| r.status == 200) {
        let v = r.json();
        let (key, seq) = (v["key"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
        if let Some(prev) = last.insert(key, seq) {
            assert!(seq > prev, "key {key}: {seq} delivered after {prev}");
        }
        count += 1;
    }
    assert_eq!(count, 1000);
    assert!(
        rx_http.requests().iter().any(|r| r.status == 503),
        "retries happened"
    );
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(50))
            .await
            .is_empty()
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_once_only_after_success_through_503_and_429_retry_after() {
    let rx_http = receiver(|n| match n {
        0..=2 => status(503),
        3 => Reply {
            headers: vec![("retry-after", "1".into())],
            ..status(429)
        },
        _ => status(200),
    })
    .await;
    let mut t = target(rx_http.url());
    t.delivery.retry.max = Duration::from_secs(3); // so Retry-After: 1 is not capped
    let (d, mut rx) = start(t);
    for i in 0..5 {
        d.submit(T0, job(i)).await;
    }
    let mut got = vec![];
    tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < 5 {
            let txn = rx.recv().await.unwrap();
            assert!(
                rx_http.delivered_ids().contains(&format!("evt_{txn}")),
                "txn {txn} acked before the receiver answered 2xx for it"
            );
            got.push(txn);
        }
    })
    .await
    .expect("all acked");
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(100))
            .await
            .is_empty(),
        "acked once"
    );

    let reqs = rx_http.requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 503, 429, 200, 200, 200, 200, 200]);
    assert!(
        reqs[..5].iter().all(|r| r.header("webhook-id") == "evt_0"),
        "the head is retried"
    );
    let waited = reqs[4].at - reqs[3].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acked_while_the_receiver_is_down() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }; // dropped: connections are refused now
    let url: url::Url = format!("http://{addr}/hook").parse().unwrap();
    let mut t = target(url);
    t.delivery.concurrency = nz(4);
    let (d, mut rx) = start(t);
    for i in 0..20 {
        d.submit(T0, job(i)).await;
    }
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(300))
            .await
            .is_empty()
    );

    let rx_http = receiver_on(TcpListener::bind(addr).await.unwrap(), |_| status(200));
    let mut got = acks(&mut rx, 20, Duration::from_secs(5)).await;
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(rx_http.delivered_ids().len(), 20);
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(100))
            .await
            .is_empty()
    );
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarded_jobs_are_neither_sent_nor_acked() {
    // After a reconnect the daemon discards what the old session queued (the new session
    // sends it again); only jobs submitted after the discard may arrive and be acked.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }; // connections are refused until the receiver starts
    let url: url::Url = format!("http://{addr}/hook").parse().unwrap();
    let mut t = target(url);
    t.delivery.concurrency = nz(4);
    let (d, mut rx) = start(t);
    for i in 0..20 {
        d.submit(T0, job(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // heads are retrying now
    d.discard_queued();
    for i in 100..110 {
        d.submit(T0, job(i)).await;
    }
    let rx_http = receiver_on(TcpListener::bind(addr).await.unwrap(), |_| status(200));
    let mut got = acks(&mut rx, 10, Duration::from_secs(5)).await;
    got.sort_unstable();
    assert_eq!(got, (100..110).collect::<Vec<_>>());
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(300))
            .await
            .is_empty()
    );
    let ids = rx_http.delivered_ids();
    let want: std::collections::HashSet<String> = (100..110).map(|i| format!("evt_{i}")).collect();
    assert_eq!(ids, want);
    d.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let elsewhere = receiver(|_| status(200)).await;
    let location = elsewhere.url().to_string();
    let rx_http = receiver(move |_| Reply {
        headers: vec![("location", location.clone())],
        ..status(307)
    })
    .await;
    let (d, mut rx) = start(target(rx_http.url()));
    d.submit(T0, job(1)).await;
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(300))
            .await
            .is_empty(),
        "a 3xx is not delivered"
    );
    assert!(rx_http.requests().len() >= 2, "a 3xx is retried");
    assert!(
        elsewhere.requests().is_empty(),
        "the Location was not followed"
    );
    d.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_4xx_and_410_are_retried_until_delivered() {
    for on_4xx in [On4xx::Retry, On4xx::Dead] {
        let rx_http = receiver(|n| match n {
            0 => status(400),
            1 => status(410),
            2 => status(422),
            _ => status(200),
        })
        .await;
        let mut t = target(rx_http.url());
        t.delivery.on_4xx = on_4xx;
        let (d, mut rx) = start(t);
        d.submit(T0, job(1)).await;
        d.submit(T0, job(2)).await;
        let got = acks(&mut rx, 2, Duration::from_secs(5)).await;
        assert_eq!(got, vec![1, 2], "{on_4xx:?}");
        let statuses: Vec<u16> = rx_http.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![400, 410, 422, 200, 200]);
        d.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_and_abandons_the_rest_unacked() {
    // In flight for 300 ms: completes within a 2 s grace and is acked; queued jobs are not sent.
    let rx_http = receiver(|_| Reply {
        delay: Duration::from_millis(300),
        ..status(200)
    })
    .await;
    let (d, mut rx) = start(target(rx_http.url()));
    for i in 0..10 {
        d.submit(T0, job(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // job 0 is on the wire
    let started = Instant::now();
    d.shutdown(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "did not wait for the queue"
    );
    let mut got = vec![];
    while let Some(a) = rx.recv().await {
        got.push(a); // the channel closes once the dispatcher is gone
    }
    assert_eq!(got, vec![0]);
    assert_eq!(rx_http.delivered_ids(), HashSet::from(["evt_0".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_what_grace_does_not_cover() {
    // One lane hangs in a request past the grace, another is in backoff against 503s.
    let rx_http = receiver(|n| {
        if n == 0 {
            Reply {
                delay: Duration::from_secs(5),
                ..status(200)
            }
        } else {
            status(503)
        }
    })
    .await;
    let mut t = target(rx_http.url());
    t.delivery.concurrency = nz(2);
    let (d, mut rx) = start(t);
    d.submit(T0, job(0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..10 {
        d.submit(T0, job(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    d.shutdown(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(1),
        "{took:?}"
    );
    let mut got = vec![];
    while let Some(a) = rx.recv().await {
        got.push(a);
    }
    assert!(got.is_empty(), "abandoned jobs were acked: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_waits_when_the_lane_is_full_and_drops_nothing() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open2 = open.clone();
    // Every request takes 400 ms until `open`, so the lane cannot keep up with the producer.
    let rx_http = receiver(move |_| Reply {
        delay: if open2.load(AtomicOrdering::SeqCst) {
            Duration::ZERO
        } else {
            Duration::from_millis(400)
        },
        ..status(200)
    })
    .await;
    let (d, mut rx) = start(target(rx_http.url()));
    let d = Arc::new(d);
    let submitted = Arc::new(AtomicUsize::new(0));
    let (d2, s2) = (d.clone(), submitted.clone());
    let producer = tokio::spawn(async move {
        for i in 0..600 {
            d2.submit(T0, job(i)).await;
            s2.fetch_add(1, AtomicOrdering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let blocked_at = submitted.load(AtomicOrdering::SeqCst);
    // Lane queue of 256, plus the one in flight (and one being handed over).
    assert!(
        (256..=258).contains(&blocked_at),
        "submit did not wait: {blocked_at}"
    );
    open.store(true, AtomicOrdering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), producer)
        .await
        .unwrap()
        .unwrap();
    let got = acks(&mut rx, 600, Duration::from_secs(10)).await;
    assert_eq!(got, (0..600).collect::<Vec<_>>());
    Arc::try_unwrap(d)
        .unwrap()
        .shutdown(Duration::from_secs(1))
        .await;
}

/// Throughput against a local receiver; prints numbers, asserts nothing about speed.
/// `cargo test --release --test delivery -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn throughput() {
    // WALHOOK_BENCH="batch:concurrency:events,…" overrides the default runs.
    let runs: Vec<(usize, usize, u64)> = std::env::var("WALHOOK_BENCH")
        .unwrap_or_else(|_| "1:64:100000,100:4:500000".into())
        .split(',')
        .map(|run| {
            let p: Vec<u64> = run.split(':').map(|x| x.parse().unwrap()).collect();
            (p[0] as usize, p[1] as usize, p[2])
        })
        .collect();
    for (batch, concurrency, n) in runs {
        let receiver = receiver(|_| status(204)).await;
        let mut t = target(receiver.url());
        t.delivery.batch = nz(batch);
        t.delivery.concurrency = nz(concurrency);
        t.delivery.signer = signer(SECRET);
        let (d, mut rx) = start(t);
        let body = Bytes::from_static(br#"{"id":"0/16B3748-1","type":"update","trigger":"bench","schema":"public","table":"orders","record":{"id":1,"status":"paid","amount":"12.50"},"old_record":null,"commit_lsn":"0/16B3748","xid":1234,"committed_at":"2026-11-30T09:55:19.123456Z"}"#);
        let started = Instant::now();
        let d = Arc::new(d);
        let d2 = d.clone();
        let producer = tokio::spawn(async move {
            for i in 0..n {
                d2.submit(
                    T0,
                    Job {
                        id: format!("evt_{i}"),
                        body: body.clone(),
                        order_key: i,
                        txn: Ack { session: 0, txn: i },
                        shape: None,
                    },
                )
                .await;
            }
        });
        let mut count = 0;
        while count < n {
            rx.recv().await.unwrap();
            count += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        producer.await.unwrap();
        println!(
            "batch={batch:<3} concurrency={concurrency:<3} events={n} {:.2}s {:.0} events/s",
            secs,
            n as f64 / secs
        );
        Arc::try_unwrap(d)
            .unwrap()
            .shutdown(Duration::from_secs(1))
            .await;
    }
}

/// A `Write` the test can read back.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn parsed(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

async fn listen(secret: Option<&str>) -> (url::Url, Lines, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/any/path", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let lines = Lines::default();
    let out = lines.clone();
    let secret = secret.map(str::to_owned);
    let task = tokio::spawn(async move {
        walhook::listen::serve(listener, secret, out).await.unwrap();
    });
    (url, lines, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_and_verifies_what_delivery_sends() {
    let (url, lines, task) = listen(Some(SECRET)).await;
    let mut t = target(url);
    t.delivery.signer = signer(SECRET);
    t.delivery.batch = nz(5);
    let (d, mut rx) = start(t);
    d.submit(T0, job(1)).await;
    acks(&mut rx, 1, Duration::from_secs(5)).await;
    d.shutdown(Duration::from_secs(1)).await;
    let got = lines.parsed();
    assert_eq!(got.len(), 1);
    let line = &got[0];
    assert_eq!(line["verified"], serde_json::json!(true));
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/any/path");
    assert!(line["webhook_id"].as_str().unwrap().starts_with("evt_1-1-"));
    assert!(line["timestamp"].as_u64().unwrap().abs_diff(now_secs()) <= 5);
    assert_eq!(line["body"], serde_json::json!({"events": [{"seq": 1}]}));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_answers_401_to_a_wrong_signature_so_nothing_is_acked() {
    let (url, lines, task) = listen(Some(SECRET)).await;
    let mut t = target(url);
    t.delivery.signer = signer("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (d, mut rx) = start(t);
    d.submit(T0, job(1)).await;
    assert!(
        no_more_acks(&mut rx, Duration::from_millis(300))
            .await
            .is_empty()
    );
    d.shutdown(Duration::from_millis(100)).await;
    let got = lines.parsed();
    assert!(got.len() >= 2, "retried after 401");
    assert!(
        got.iter()
            .all(|l| l["verified"] == serde_json::json!(false))
    );
    assert_eq!(got[0]["body"], serde_json::json!({"seq": 1}));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_without_a_secret_reports_null_and_keeps_non_json_as_text() {
    let (url, lines, task) = listen(None).await;
    let (d, mut rx) = start(target(url));
    d.submit(
        T0,
        Job {
            body: Bytes::from_static(b"plain text"),
            ..job(3)
        },
    )
    .await;
    acks(&mut rx, 1, Duration::from_secs(5)).await;
    d.shutdown(Duration::from_secs(1)).await;
    let got = lines.parsed();
    assert_eq!(got[0]["verified"], serde_json::Value::Null);
    assert_eq!(got[0]["body"], "plain text");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_answers_health_checks_without_printing_them_but_prints_deliveries_there() {
    let (url, lines, task) = listen(Some(SECRET)).await;
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
        .parse()
        .unwrap();
    let answer = walhook::probe::get(addr, "/healthz").await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        lines.parsed().is_empty(),
        "a health check is not a delivery"
    );
    // A trigger whose URL happens to end in /healthz still gets its deliveries printed.
    let mut t = target(url.join("/healthz").unwrap());
    t.delivery.signer = signer(SECRET);
    let (d, mut rx) = start(t);
    d.submit(T0, job(1)).await;
    acks(&mut rx, 1, Duration::from_secs(5)).await;
    d.shutdown(Duration::from_secs(1)).await;
    let got = lines.parsed();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0]["path"].as_str(), got[0]["verified"].as_bool()),
        (Some("/healthz"), Some(true))
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_time_requests_and_track_depth() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let rx_http = receiver(|n| if n == 0 { status(503) } else { status(200) }).await;
    let mut t = target(rx_http.url());
    t.name = "orders".into();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Handles are made at start, so a recorder in scope there is the one they record into.
    let d = metrics::with_local_recorder(&recorder, || Dispatcher::start(&[t], tx)).unwrap();
    for i in 0..3 {
        d.submit(T0, job(i)).await;
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an ack within 5 s");
    }
    let text = prometheus.render();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(r#"walhook_deliveries_total{trigger="orders",outcome="delivered"} 3"#),
        "{text}"
    );
    assert!(
        has(r#"walhook_deliveries_total{trigger="orders",outcome="server_error"} 1"#),
        "{text}"
    );
    assert!(has(r#"walhook_queue_depth{trigger="orders"} 0"#), "{text}");
    assert!(
        has(r#"walhook_delivery_seconds_count{trigger="orders"} 4"#),
        "{text}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}
