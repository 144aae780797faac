//! The operator endpoints: `/healthz` (the process runs), `/readyz` (it is streaming from
//! the slot), `/metrics` (Prometheus text), and the [`Activity`] counters behind the periodic
//! summary line.
//!
//! If the port is taken (a second instance on the same host, such as the hot standby), the
//! next free one of the following [`PORT_TRIES`]` - 1` ports is used and a warning names it,
//! so the standby still starts; port 0 asks for any free port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What `/readyz` reports; set by the daemon loop.
#[derive(Debug, Default)]
pub struct Health {
    streaming: AtomicBool,
    /// Publication and table drift seen by the running session (see [`crate::drift`]).
    pub drift: std::sync::Arc<crate::drift::Drift>,
}

impl Health {
    /// Records whether a replication session is streaming.
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Release);
        metrics::gauge!("walhook_streaming").set(if on { 1.0 } else { 0.0 });
    }

    /// Whether a replication session is streaming.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }
}

/// What walhook has done since it started, for the summary line: plain counters, cheap to
/// bump from the delivery lanes and the status writer.
#[derive(Debug, Default)]
pub struct Activity {
    delivered: AtomicU64,
    failed: AtomicU64,
    parked: AtomicU64,
    dead: AtomicU64,
    received: AtomicU64,
    confirmed: AtomicU64,
}

/// The process's activity counters (one pipeline per process, like the metrics recorder).
pub static ACTIVITY: Activity = Activity::new();

/// A reading of [`Activity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivitySnapshot {
    /// Events delivered (2xx), since start.
    pub delivered: u64,
    /// Requests that failed (non-2xx or transport error) and will be retried, since start.
    pub failed: u64,
    /// Events written to `walhook.parked` as pending, since start.
    pub parked: u64,
    /// Events that went dead, since start.
    pub dead: u64,
    /// Bytes of WAL received but not yet confirmed.
    pub unconfirmed: u64,
}

impl Activity {
    /// All zero.
    pub const fn new() -> Activity {
        Activity {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            received: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
        }
    }

    /// Records one request's outcome: `events` delivered, or one failed attempt.
    pub fn request(&self, delivered: bool, events: u64) {
        if delivered {
            self.delivered.fetch_add(events, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records `events` parked (pending) or gone dead.
    pub fn parked(&self, events: u64, dead: bool) {
        let counter = if dead { &self.dead } else { &self.parked };
        counter.fetch_add(events, Ordering::Relaxed);
    }

    /// Records the stream's received and confirmed positions.
    pub fn positions(&self, received: u64, confirmed: u64) {
        self.received.store(received, Ordering::Relaxed);
        self.confirmed.store(confirmed, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ActivitySnapshot {
        let received = self.received.load(Ordering::Relaxed);
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        ActivitySnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            unconfirmed: received.saturating_sub(confirmed),
        }
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address and the ports after it are all taken.
    #[error(
        "cannot listen on {addr} or the {} ports after it: all in use (set [server] listen to a free address, or \"\" to turn the server off)",
        PORT_TRIES - 1
    )]
    AllTaken {
        /// The configured address.
        addr: SocketAddr,
    },
    /// The address is not ours (or another bind error).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A metrics recorder was already installed.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// How many ports, from the configured one up, are tried before giving up.
pub const PORT_TRIES: u16 = 10;

/// The kind of a metric, for its `# HELP` registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (seconds).
    Histogram,
}

/// Every metric walhook exports, with its help text (`# HELP` in /metrics).
pub const METRICS: &[(&str, MetricKind, &str)] = &[
    (
        "walhook_drift",
        MetricKind::Gauge,
        "Publication or table drift found by the latest check and not resolved (a trigger's table out of the publication, renamed over, or dropped).",
    ),
    (
        "walhook_drift_total",
        MetricKind::Counter,
        "Drift findings, by kind (publication, name, dropped).",
    ),
    (
        "walhook_parked",
        MetricKind::Gauge,
        "Pending events in walhook.parked, by trigger (read from the table every few seconds).",
    ),
    (
        "walhook_dead",
        MetricKind::Gauge,
        "Dead events in walhook.parked (no longer retried; walhook replay sends them again), by trigger.",
    ),
    (
        "walhook_parked_total",
        MetricKind::Counter,
        "Events written to walhook.parked because their target kept failing past park_after, by trigger.",
    ),
    (
        "walhook_unparked_total",
        MetricKind::Counter,
        "Parked events delivered from walhook.parked, by trigger.",
    ),
    (
        "walhook_dead_total",
        MetricKind::Counter,
        "Events given up on (give_up_after passed, or a final 4xx with on_4xx = \"dead\"), by trigger.",
    ),
    (
        "walhook_deliveries_total",
        MetricKind::Counter,
        "Events per delivery attempt outcome (delivered, server_error, timeout, connect_error, rejected, gone, ...), by trigger.",
    ),
    (
        "walhook_delivery_seconds",
        MetricKind::Histogram,
        "Time of one webhook request, from sending to the end of the answer, by trigger.",
    ),
    (
        "walhook_queue_depth",
        MetricKind::Gauge,
        "Events submitted to a trigger and not yet delivered (queued or being retried).",
    ),
    (
        "walhook_filter_errors_total",
        MetricKind::Counter,
        "Events whose `when` expression could not be evaluated (counted as false), by trigger.",
    ),
    (
        "walhook_render_errors_total",
        MetricKind::Counter,
        "Events a `url` or header template or a `body` failed for (not sent; they fail like a 4xx), by trigger.",
    ),
    (
        "walhook_changed_unknown_total",
        MetricKind::Counter,
        "Updates that fired a trigger with `changed` because the old row was unknown (REPLICA IDENTITY not FULL).",
    ),
    (
        "walhook_dropped_type_columns_total",
        MetricKind::Counter,
        "Columns whose type was dropped after the change was written, delivered as their text.",
    ),
    (
        "walhook_received_lsn",
        MetricKind::Gauge,
        "The highest WAL position received from the slot, as a number.",
    ),
    (
        "walhook_confirmed_lsn",
        MetricKind::Gauge,
        "The slot position confirmed to Postgres (everything before it is delivered), as a number.",
    ),
    (
        "walhook_unconfirmed_bytes",
        MetricKind::Gauge,
        "Bytes of WAL received but not yet delivered and confirmed (the slot lag walhook holds).",
    ),
    (
        "walhook_streaming",
        MetricKind::Gauge,
        "1 while this instance streams from the slot, 0 while it connects or waits as a standby.",
    ),
    (
        "walhook_transactions_in_flight",
        MetricKind::Gauge,
        "Transactions read from the slot whose webhooks are not all delivered yet.",
    ),
];

/// Registers the help text of every metric in [`METRICS`] with the installed recorder.
pub fn describe_metrics() {
    for &(name, kind, help) in METRICS {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(name, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, help),
            MetricKind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
        }
    }
}

/// Installs the Prometheus recorder for the `metrics` macros and describes every metric;
/// call once per process, inside the runtime.
pub fn install_metrics() -> Result<PrometheusHandle, ServerError> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| ServerError::Recorder(e.to_string()))?;
    describe_metrics();
    // Histogram samples pile up until drained; rendering drains them, but nobody may scrape.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Binds `addr` (or, if its port is taken, one of the next ports) and serves the endpoints in
/// a background task; logs and returns the bound address.
pub async fn start(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: PrometheusHandle,
) -> Result<SocketAddr, ServerError> {
    let listener = bind(addr).await?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    if addr.port() != 0 && bound.port() != addr.port() {
        tracing::warn!(
            "port {} is taken (another walhook on this host?); the status server uses {} instead",
            addr.port(),
            bound.port()
        );
    }
    tracing::info!("status server on http://{bound} (/healthz /readyz /metrics)");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { health, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("status server stopped: {e}");
        }
    });
    Ok(bound)
}

/// Binds `addr`, moving up one port at a time while the port is in use.
async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    let tries = if addr.port() == 0 { 1 } else { PORT_TRIES };
    for offset in 0..tries {
        let Some(port) = addr.port().checked_add(offset) else {
            break;
        };
        let at = SocketAddr::new(addr.ip(), port);
        match tokio::net::TcpListener::bind(at).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(ServerError::Bind { addr: at, source }),
        }
    }
    Err(ServerError::AllTaken { addr })
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.drift.is_drifting() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "streaming, but the publication or the triggers' tables drifted (see the log)\n",
        )
    } else if state.health.is_streaming() {
        (StatusCode::OK, "streaming\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not streaming\n")
    }
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_moves_to_the_next_free_one() {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taken = first.local_addr().unwrap();
        match bind(taken).await {
            Ok(second) => {
                let port = second.local_addr().unwrap().port();
                assert!(
                    port > taken.port() && port < taken.port() + PORT_TRIES,
                    "{port}"
                );
            }
            // Every one of the next ports belongs to someone else on this machine.
            Err(ServerError::AllTaken { addr }) => assert_eq!(addr, taken),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn activity_counts_events_attempts_and_lag() {
        let a = Activity::new();
        a.request(true, 5);
        a.request(false, 5);
        a.request(false, 1);
        a.parked(7, false);
        a.parked(1, true);
        a.positions(1000, 400);
        assert_eq!(
            a.snapshot(),
            ActivitySnapshot {
                delivered: 5,
                failed: 2,
                parked: 7,
                dead: 1,
                unconfirmed: 600
            }
        );
        a.positions(1000, 1000);
        assert_eq!(a.snapshot().unconfirmed, 0);
    }
}
