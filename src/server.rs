//! The operator endpoints: `/healthz` (the process runs), `/readyz` (it is streaming from
//! the slot), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What `/readyz` reports; set by the daemon loop.
#[derive(Debug, Default)]
pub struct Health {
    streaming: AtomicBool,
}

impl Health {
    /// Records whether a replication session is streaming.
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Release);
    }

    /// Whether a replication session is streaming.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address is taken or not ours.
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

/// Installs the Prometheus recorder for the `metrics` macros; call once per process, inside
/// the runtime.
pub fn install_metrics() -> Result<PrometheusHandle, ServerError> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| ServerError::Recorder(e.to_string()))?;
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

/// Binds `addr` and serves the endpoints in a background task; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: PrometheusHandle,
) -> Result<SocketAddr, ServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
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

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.is_streaming() {
        (StatusCode::OK, "streaming\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not streaming\n")
    }
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}
