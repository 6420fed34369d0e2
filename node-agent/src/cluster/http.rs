//! The agent's own HTTP endpoint (`--http-port`): `/metrics` (Prometheus), `/healthz`
//! (the process and its loop are alive), `/readyz` (tuned, probed, and the reader serving
//! or deliberately not).

use std::borrow::Cow;
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
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `supported`, `unsupported` or `unknown` (no current reader report).
    pub verdict: &'static str,
}

/// Gauges and counters the agent loop updates. Every series carries the constant labels
/// `node` and `cluster` (`namespace/name`), so alerts name the node whatever the scrape
/// config adds.
#[derive(Default)]
pub struct Metrics {
    pub io_uring_supported: Gauge,
    /// State set: 1 for the current verdict, 0 for the other two.
    pub io_uring_verdict: Family<VerdictLabels, Gauge>,
    pub aio_tuned: Gauge,
    pub node_ready: Gauge,
    pub aio_max_nr: Gauge,
    pub aio_max_nr_required: Gauge,
    /// `fs.aio-nr`: events all io_setup contexts on the host hold now.
    pub aio_nr: Gauge,
    /// Events one storage process charges (`aio.workers × aio.maxEvents`): less free
    /// than this and its next start fails io_setup with EAGAIN.
    pub aio_process_events: Gauge,
    pub applied_generation: Gauge,
    /// Unix time of the end of the last pass that confirmed the StorageNode current.
    pub last_report_timestamp: Gauge,
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

impl Metrics {
    /// Set the verdict state set (`None` = no current reader report).
    pub fn set_verdict(&self, supported: Option<bool>) {
        let now = match supported {
            Some(true) => "supported",
            Some(false) => "unsupported",
            None => "unknown",
        };
        for verdict in ["supported", "unsupported", "unknown"] {
            self.io_uring_verdict
                .get_or_create(&VerdictLabels { verdict })
                .set(i64::from(verdict == now));
        }
    }

    /// Re-read `fs.aio-nr` and `fs.aio-max-nr` (a scrape sees them as they are now, not
    /// as of the last pass); an unreadable value keeps the last one.
    pub fn refresh_aio(&self) {
        let read = |name: &str| -> Option<i64> {
            std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        if let Some(v) = read("aio-nr") {
            self.aio_nr.set(v);
        }
        if let Some(v) = read("aio-max-nr") {
            self.aio_max_nr.set(v);
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs() as i64)
}

impl Health {
    /// `node` and `cluster` (`namespace/name`) label every series.
    pub fn new(stall_after: Duration, node: &str, cluster: &str) -> Arc<Self> {
        let metrics = Metrics::default();
        metrics.set_verdict(None);
        // Until the first report, staleness counts from the start.
        metrics.last_report_timestamp.set(unix_now());
        let labels = [
            (Cow::Borrowed("node"), Cow::Owned(node.to_string())),
            (Cow::Borrowed("cluster"), Cow::Owned(cluster.to_string())),
        ];
        let mut registry = Registry::with_prefix_and_labels("ringmaster_agent", labels.into_iter());
        registry.register(
            "io_uring_supported",
            "1 when io_uring works under the reader's security context",
            metrics.io_uring_supported.clone(),
        );
        registry.register(
            "io_uring_verdict",
            "The reader's io_uring verdict as a state set: 1 for the current one of supported, unsupported, unknown",
            metrics.io_uring_verdict.clone(),
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
            "aio_nr",
            "fs.aio-nr now: libaio events allocated on the host",
            metrics.aio_nr.clone(),
        );
        registry.register(
            "aio_process_events",
            "libaio events one storage process allocates (aio.workers x aio.maxEvents); fs.aio-max-nr - fs.aio-nr below this fails its next io_setup with EAGAIN",
            metrics.aio_process_events.clone(),
        );
        registry.register(
            "last_report_timestamp_seconds",
            "Unix time the agent last confirmed its StorageNode report current with the API server",
            metrics.last_report_timestamp.clone(),
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
    h.metrics.refresh_aio();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(h: &Health) -> String {
        let mut s = String::new();
        encode(&mut s, &h.registry).unwrap();
        s
    }

    #[test]
    fn every_series_names_its_node_and_cluster_and_the_verdict_is_a_state_set() {
        let h = Health::new(Duration::from_secs(60), "n1", "storage/main");
        let l = r#"node="n1",cluster="storage/main""#;
        let text = encoded(&h);
        assert!(
            text.contains(&format!(
                "ringmaster_agent_io_uring_verdict{{{l},verdict=\"unknown\"}} 1\n"
            )),
            "{text}"
        );
        h.metrics.set_verdict(Some(true));
        h.metrics.set_verdict(Some(false));
        let text = encoded(&h);
        for (verdict, v) in [("supported", 0), ("unsupported", 1), ("unknown", 0)] {
            assert!(
                text.contains(&format!(
                    "ringmaster_agent_io_uring_verdict{{{l},verdict=\"{verdict}\"}} {v}\n"
                )),
                "{verdict}: {text}"
            );
        }
        // Stale-report age counts from the start until the first report.
        let started = text
            .lines()
            .find_map(|x| {
                x.strip_prefix(&format!(
                    "ringmaster_agent_last_report_timestamp_seconds{{{l}}} "
                ))
            })
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("{text}"));
        assert!((unix_now() - started).abs() <= 5, "{started}");
    }

    #[test]
    fn a_scrape_reads_aio_nr_and_aio_max_nr_as_they_are_now() {
        let h = Health::new(Duration::from_secs(60), "n1", "storage/main");
        let now = |name: &str| -> i64 {
            std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        // Hold a libaio context so fs.aio-nr is not 0 (a scrape that never read it would
        // still say 0).
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes one aio_context_t to the pointer we pass.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_setup,
                64 as libc::c_long,
                &mut ctx as *mut libc::c_ulong,
            )
        };
        assert_eq!(r, 0, "io_setup(64): {}", std::io::Error::last_os_error());
        // Other processes on the host open and close contexts: compare only when the
        // values did not move around the refresh.
        let mut seen = None;
        for _ in 0..100 {
            let (nr, max) = (now("aio-nr"), now("aio-max-nr"));
            h.metrics.refresh_aio();
            if (now("aio-nr"), now("aio-max-nr")) == (nr, max) {
                seen = Some((nr, max));
                break;
            }
        }
        // SAFETY: ctx is the context io_setup created above.
        unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
        let (nr, max) = seen.expect("fs.aio-nr never held still for one refresh");
        assert!(nr > 0, "fs.aio-nr {nr} while this test holds a context");
        assert_eq!(h.metrics.aio_nr.get(), nr);
        assert_eq!(h.metrics.aio_max_nr.get(), max);
    }
}
