//! The agent's own HTTP endpoint (`--http-port`): `/metrics` (Prometheus), `/healthz`
//! (the process and its loop are alive), `/readyz` (tuned, probed, and the reader serving
//! or deliberately not).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Gauges and counters the agent loop updates.
#[derive(Default)]
pub struct Metrics {
    pub io_uring_supported: Gauge,
    pub aio_tuned: Gauge,
    pub node_ready: Gauge,
    pub aio_max_nr: Gauge,
    pub aio_max_nr_required: Gauge,
    pub applied_generation: Gauge,
    pub passes: Counter,
    pub pass_errors: Counter,
    pub api_writes: Counter,
    pub heartbeats: Counter,
}

/// Shared between the loop and the HTTP handlers.
pub struct Health {
    pub metrics: Metrics,
    registry: Registry,
    ready: AtomicBool,
    ready_reason: Mutex<String>,
    /// Seconds since `started` of the last completed pass (liveness).
    last_pass: AtomicI64,
    started: Instant,
    /// A pass older than this makes `/healthz` fail (the loop is stuck).
    stall_after: Duration,
}

impl Health {
    pub fn new(stall_after: Duration) -> Arc<Self> {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("ringmaster_agent");
        registry.register(
            "io_uring_supported",
            "1 when io_uring works under the reader's security context",
            metrics.io_uring_supported.clone(),
        );
        registry.register(
            "aio_tuned",
            "1 when fs.aio-max-nr >= required",
            metrics.aio_tuned.clone(),
        );
        registry.register(
            "node_ready",
            "1 when the node can run the storage service",
            metrics.node_ready.clone(),
        );
        registry.register(
            "aio_max_nr",
            "fs.aio-max-nr now",
            metrics.aio_max_nr.clone(),
        );
        registry.register(
            "aio_max_nr_required",
            "fs.aio-max-nr the cluster needs on this node",
            metrics.aio_max_nr_required.clone(),
        );
        registry.register(
            "applied_generation",
            "StorageCluster generation fully applied on this node",
            metrics.applied_generation.clone(),
        );
        registry.register("passes", "Agent reconcile passes", metrics.passes.clone());
        registry.register(
            "pass_errors",
            "Agent passes that failed",
            metrics.pass_errors.clone(),
        );
        registry.register(
            "api_writes",
            "Writes sent to the Kubernetes API (heartbeat renewals apart)",
            metrics.api_writes.clone(),
        );
        registry.register(
            "heartbeats",
            "StorageNode writes that only renewed the heartbeat",
            metrics.heartbeats.clone(),
        );
        Arc::new(Health {
            metrics,
            registry,
            ready: AtomicBool::new(false),
            ready_reason: Mutex::new("starting".into()),
            last_pass: AtomicI64::new(0),
            started: Instant::now(),
            stall_after,
        })
    }

    pub fn set_ready(&self, ready: bool, reason: impl Into<String>) {
        self.ready.store(ready, Ordering::Relaxed);
        *self.ready_reason.lock().unwrap() = reason.into();
    }

    pub fn pass_done(&self) {
        self.last_pass
            .store(self.started.elapsed().as_secs() as i64, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        let now = self.started.elapsed().as_secs() as i64;
        now - self.last_pass.load(Ordering::Relaxed) <= self.stall_after.as_secs() as i64
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let mut body = String::new();
    if encode(&mut body, &h.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encode failed".to_string(),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn healthz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.alive() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "agent loop stalled\n".to_string(),
        )
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let reason = h.ready_reason.lock().unwrap().clone();
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready: {reason}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
    }
}

/// Bind and serve in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--http-port: cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "agent HTTP endpoint stopped");
        }
    });
    Ok(bound)
}
