//! Prometheus metrics of the read service (prometheus-client, text exposition).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use ringmaster_ring::io::WorkerMode;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    /// Range reads by HTTP status.
    pub reads: Family<Labels, Counter>,
    pub bytes: Counter,
    pub latency: Histogram,
    /// HTTP reads in progress.
    pub in_flight: Gauge,
    /// Reads queued or in flight in the worker pool (sampled at scrape).
    pub pool_in_flight: Gauge,
    /// HTTP connections open.
    pub connections: Gauge,
    /// io_uring rings replaced after a fatal `io_uring_enter` error (synced at scrape).
    pub ring_replacements: Counter,
    /// Responses whose body went from the page cache to the socket with sendfile(2).
    pub sendfile: Counter,
    /// Requests refused 401 by the token check, by reason (`missing`, `invalid`).
    pub unauthorized: Family<Labels, Counter>,
    /// Counters of the usual statuses, resolved once (no label allocation per request).
    common: Vec<(u16, Counter)>,
}

const COMMON_STATUSES: [u16; 9] = [200, 206, 400, 401, 404, 416, 500, 503, 405];

impl Metrics {
    pub fn new(mode: WorkerMode, reason: &str, ring_entries: u64, workers: u32) -> Self {
        let mut registry = Registry::with_prefix("ringmaster");
        let reads = Family::<Labels, Counter>::default();
        registry.register("reads", "Range reads served, by HTTP status", reads.clone());
        let bytes = Counter::default();
        registry.register("read_bytes", "Bytes served by range reads", bytes.clone());
        let latency = Histogram::new(exponential_buckets(10e-6, 2.0, 20));
        registry.register(
            "read_duration_seconds",
            "Range read latency (request to body ready)",
            latency.clone(),
        );
        let unauthorized = Family::<Labels, Counter>::default();
        registry.register(
            "requests_unauthorized",
            "Requests refused 401 (reason=missing: no bearer token; invalid: a wrong one)",
            unauthorized.clone(),
        );
        for r in ["missing", "invalid"] {
            let _ = unauthorized.get_or_create(&vec![("reason".to_string(), r.to_string())]);
        }
        let sendfile = Counter::default();
        registry.register(
            "sendfile_responses",
            "Range responses sent from the page cache with sendfile(2) (no copy)",
            sendfile.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "reads_in_flight",
            "HTTP range reads in progress",
            in_flight.clone(),
        );
        let pool_in_flight = Gauge::default();
        registry.register(
            "pool_reads_in_flight",
            "Reads queued or in flight in the worker pool",
            pool_in_flight.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_open",
            "HTTP connections open (at most --max-connections)",
            connections.clone(),
        );
        let ring_replacements = Counter::default();
        registry.register(
            "ring_replacements",
            "io_uring rings replaced after io_uring_enter failed for good (reads retried on the new ring)",
            ring_replacements.clone(),
        );
        let ring_entries_g = Gauge::<i64>::default();
        ring_entries_g.set(ring_entries as i64);
        registry.register(
            "ring_entries",
            "io_uring entries over all worker rings (0 in pread mode)",
            ring_entries_g,
        );
        let workers_g = Gauge::<i64>::default();
        workers_g.set(workers as i64);
        registry.register("workers", "Read worker threads", workers_g);
        let mode_g = Family::<Labels, Gauge>::default();
        for m in [WorkerMode::IoUring, WorkerMode::Pread] {
            let mut labels = vec![("mode".to_string(), m.as_str().to_string())];
            if m == mode {
                labels.push(("reason".to_string(), reason.to_string()));
            }
            mode_g.get_or_create(&labels).set((m == mode) as i64);
        }
        registry.register(
            "worker_mode",
            "Worker mode running (1) with the reason it was chosen",
            mode_g,
        );
        let common = COMMON_STATUSES
            .iter()
            .map(|&st| (st, reads.get_or_create(&status_labels(st)).clone()))
            .collect();
        Metrics {
            common,
            registry,
            reads,
            unauthorized,
            bytes,
            sendfile,
            latency,
            in_flight,
            pool_in_flight,
            ring_replacements,
            connections,
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }

    pub fn count(&self, status: u16) {
        match self.common.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.reads.get_or_create(&status_labels(status)).inc();
            }
        }
    }
}

impl Metrics {
    /// A request refused 401; a file read also counts in `reads_total{status="401"}`.
    pub fn count_unauthorized(&self, reason: &str, file_route: bool) {
        self.unauthorized
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
        if file_route {
            self.count(401);
        }
    }
}

fn status_labels(status: u16) -> Labels {
    vec![("status".to_string(), status.to_string())]
}
