//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::metrics::Metrics;

/// Shared between the HTTP endpoints and the rest of the process.
#[derive(Clone)]
pub struct Probes {
    pub metrics: Arc<Metrics>,
    /// Set once the process reached the API server; a standby replica is ready too.
    pub ready: Arc<AtomicBool>,
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(probes)
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], p.metrics.encode())
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if p.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Binds the metrics and probe address. Done before anything else starts, so
/// that a port in use stops the operator with a message instead of leaving it
/// running without probes (and restarted by its liveness probe, unexplained).
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probes: Probes,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(probes)).with_graceful_shutdown(shutdown).await
}
