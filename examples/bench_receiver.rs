//! A fast local webhook receiver for `bench/run`: counts events (batch-aware) and records the
//! time from each event's `committed_at` to its arrival.
//!
//! ```text
//! cargo run --release --example bench_receiver -- --port 9000 [--delay-ms 50]
//! ```
//!
//! - Any POST is a delivery. Its events are counted by the `"committed_at":"` fields in the
//!   body, so a single event and a `{"events":[…]}` batch both count right without a JSON parse
//!   (the receiver shares two cores with Postgres and walhook: it must stay cheap).
//! - `--delay-ms` holds every answer that long (a slow receiver, for the memory test).
//! - `GET /wait?n=N` blocks until N events have arrived and answers
//!   `{"count":…,"done_at_us":…}`: the Unix time (µs) at which the count reached N.
//! - `GET /stats` answers `{"count":…,"requests":…,"p50_ms":…,"p99_ms":…,"max_ms":…}` over
//!   every event received so far (latency = arrival − `committed_at`, same machine clock).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use tokio::sync::Notify;

const FIELD: &str = "\"committed_at\":\"";

struct Receiver {
    delay: Duration,
    count: AtomicU64,
    requests: AtomicU64,
    arrived: Notify,
    /// Commit → arrival, microseconds, one per event.
    latencies: Mutex<Vec<i64>>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `2026-11-30T09:55:19.123456Z` → Unix microseconds (the form walhook always writes).
fn parse_rfc3339_us(s: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &b in s.get(r)? {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(b - b'0');
        }
        Some(v)
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

async fn receive(
    State(r): State<&'static Receiver>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> (StatusCode, String) {
    let arrived = now_us();
    if method == Method::GET {
        return match uri.path() {
            "/wait" => {
                let n: u64 = uri
                    .query()
                    .and_then(|q| q.strip_prefix("n="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                loop {
                    let notified = r.arrived.notified();
                    let count = r.count.load(Ordering::Acquire);
                    if count >= n {
                        // Woken right after the request that reached n (same thread, next scheduler turn).
                        let at = now_us();
                        return (
                            StatusCode::OK,
                            format!("{{\"count\":{count},\"done_at_us\":{at}}}\n"),
                        );
                    }
                    notified.await;
                }
            }
            "/stats" => (StatusCode::OK, stats(r)),
            _ => (StatusCode::NOT_FOUND, String::new()),
        };
    }
    let text = String::from_utf8_lossy(&body);
    let mut n = 0u64;
    let mut lat = Vec::new();
    for (i, _) in text.match_indices(FIELD) {
        n += 1;
        let at = i + FIELD.len();
        if let Some(ts) = text.as_bytes().get(at..at + 27).and_then(parse_rfc3339_us) {
            lat.push(arrived - ts);
        }
    }
    if let Ok(mut all) = r.latencies.lock() {
        all.extend_from_slice(&lat);
    }
    r.requests.fetch_add(1, Ordering::Relaxed);
    r.count.fetch_add(n, Ordering::AcqRel);
    r.arrived.notify_waiters();
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    (StatusCode::OK, String::new())
}

fn stats(r: &Receiver) -> String {
    let mut lat = r.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i.min(lat.len() - 1)] as f64 / 1000.0
    };
    format!(
        "{{\"count\":{},\"requests\":{},\"samples\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}\n",
        r.count.load(Ordering::Acquire),
        r.requests.load(Ordering::Acquire),
        lat.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    )
}

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port = arg(&args, "--port").unwrap_or(9000);
    let receiver: &'static Receiver = Box::leak(Box::new(Receiver {
        delay: Duration::from_millis(arg(&args, "--delay-ms").unwrap_or(0)),
        count: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        arrived: Notify::new(),
        latencies: Mutex::new(Vec::with_capacity(1 << 20)),
    }));
    // One thread: the receiver must not compete with walhook for the machine's cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let port = u16::try_from(port).unwrap_or(9000);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("bench_receiver: http://{}", listener.local_addr()?);
        let app = Router::new()
            .fallback(receive)
            .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(receiver);
        axum::serve(listener, app).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_walhook_timestamps() {
        assert_eq!(parse_rfc3339_us(b"1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            parse_rfc3339_us(b"2026-11-30T09:55:19.123456Z"),
            Some(1_796_032_519_123_456)
        );
        assert_eq!(parse_rfc3339_us(b"2026-11-30T09:55:19"), None);
    }
}
