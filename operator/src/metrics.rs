//! Prometheus metrics (`/metrics`): reconciles, errors, durations, every API write the
//! operator makes (counted on the HTTP client itself, so nothing escapes the count) and
//! fleet gauges per StorageCluster.

use std::sync::Arc;

use http::{Method, Request};
use kube::client::Body;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use ringmaster_api::StorageClusterStatus;
use tower::util::MapRequestLayer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Resource path segment, e.g. `daemonsets`, `storageclusters/status`, `leases`.
    pub resource: String,
    /// HTTP verb: POST, PUT, PATCH, DELETE.
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLabels {
    /// `namespace/name` of the StorageCluster.
    pub cluster: String,
    /// desired, reporting, tuned, io_uring_supported, io_uring_unsupported, ready, up_to_date.
    pub state: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub api_writes: Family<WriteLabels, Counter>,
    pub fleet: Family<FleetLabels, Gauge>,
    /// `metadata.generation` per StorageCluster: what every agent must report applied.
    pub generation: Family<ClusterLabels, Gauge>,
    pub leader: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// `namespace/name` of the StorageCluster.
    pub cluster: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ringmaster_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let api_writes = Family::<WriteLabels, Counter>::default();
        let fleet = Family::<FleetLabels, Gauge>::default();
        let generation = Family::<ClusterLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "api_writes",
            "API requests that write (POST, PUT, PATCH, DELETE), by resource and verb",
            api_writes.clone(),
        );
        registry.register(
            "fleet_nodes",
            "Nodes of each StorageCluster by state (same numbers as its status)",
            fleet.clone(),
        );
        registry.register(
            "cluster_generation",
            "metadata.generation of each StorageCluster: the generation its agents must report applied (up_to_date)",
            generation.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            api_writes,
            fleet,
            generation,
            leader,
        }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }

    /// Create the error counter of each kind at 0.
    pub fn init_error_kinds(&self, kinds: &[&str]) {
        for k in kinds {
            let _ = self
                .reconcile_errors
                .get_or_create(&ErrorLabels { error: (*k).into() });
        }
    }

    pub fn set_fleet(&self, cluster: &str, generation: i64, st: &StorageClusterStatus) {
        self.generation
            .get_or_create(&ClusterLabels {
                cluster: cluster.into(),
            })
            .set(generation);
        for (state, v) in [
            ("desired", st.desired),
            ("reporting", st.reporting),
            ("tuned", st.tuned),
            ("io_uring_supported", st.io_uring_supported),
            ("io_uring_unsupported", st.io_uring_unsupported),
            ("ready", st.ready),
            ("up_to_date", st.up_to_date),
        ] {
            self.fleet
                .get_or_create(&FleetLabels {
                    cluster: cluster.into(),
                    state: state.into(),
                })
                .set(i64::from(v));
        }
    }

    pub fn forget_fleet(&self, cluster: &str) {
        self.generation.remove(&ClusterLabels {
            cluster: cluster.into(),
        });
        for state in [
            "desired",
            "reporting",
            "tuned",
            "io_uring_supported",
            "io_uring_unsupported",
            "ready",
            "up_to_date",
        ] {
            self.fleet.remove(&FleetLabels {
                cluster: cluster.into(),
                state: state.into(),
            });
        }
    }

    /// A client layer that counts every write request by resource and verb.
    pub fn write_counter(
        self: &Arc<Self>,
    ) -> MapRequestLayer<impl Fn(Request<Body>) -> Request<Body> + Clone> {
        let m = Arc::clone(self);
        MapRequestLayer::new(move |req: Request<Body>| {
            if let Some(labels) = write_labels(req.method(), req.uri().path()) {
                m.api_writes.get_or_create(&labels).inc();
            }
            req
        })
    }
}

/// Labels for a write request, `None` for reads. The resource is the path segment
/// after the namespace (or the API version), plus a subresource if any:
/// `/apis/apps/v1/namespaces/x/daemonsets/y` → `daemonsets`,
/// `/apis/ringmaster.io/v1alpha1/namespaces/x/storageclusters/y/status` → `storageclusters/status`.
pub fn write_labels(method: &Method, path: &str) -> Option<WriteLabels> {
    if !matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return None;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Skip `api/v1` or `apis/<group>/<version>`.
    let rest = match segs.first() {
        Some(&"api") => segs.get(2..),
        Some(&"apis") => segs.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [] => "unknown".to_string(),
        [r] | [r, _] => r.to_string(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
    };
    Some(WriteLabels {
        resource,
        verb: method.as_str().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_labels_name_resource_and_subresource() {
        let l = |m: Method, p: &str| write_labels(&m, p).map(|l| (l.resource, l.verb));
        assert_eq!(l(Method::GET, "/api/v1/nodes"), None);
        assert_eq!(
            l(
                Method::PATCH,
                "/apis/apps/v1/namespaces/s/daemonsets/fast-agent"
            ),
            Some(("daemonsets".into(), "PATCH".into()))
        );
        assert_eq!(
            l(
                Method::PATCH,
                "/apis/ringmaster.io/v1alpha1/namespaces/s/storageclusters/fast/status"
            ),
            Some(("storageclusters/status".into(), "PATCH".into()))
        );
        assert_eq!(
            l(Method::PATCH, "/api/v1/nodes/n1"),
            Some(("nodes".into(), "PATCH".into()))
        );
        assert_eq!(
            l(
                Method::DELETE,
                "/apis/ringmaster.io/v1alpha1/storagenodes/n1"
            ),
            Some(("storagenodes".into(), "DELETE".into()))
        );
        assert_eq!(
            l(Method::POST, "/apis/events.k8s.io/v1/namespaces/s/events"),
            Some(("events".into(), "POST".into()))
        );
        assert_eq!(
            l(
                Method::PATCH,
                "/apis/coordination.k8s.io/v1/namespaces/s/leases/ringmaster-operator"
            ),
            Some(("leases".into(), "PATCH".into()))
        );
    }

    #[test]
    fn cluster_generation_is_set_with_the_fleet_and_forgotten_with_it() {
        let m = Metrics::default();
        m.set_fleet("s/main", 7, &StorageClusterStatus::default());
        let text = m.encode();
        assert!(
            text.contains("ringmaster_operator_cluster_generation{cluster=\"s/main\"} 7\n"),
            "{text}"
        );
        m.forget_fleet("s/main");
        let text = m.encode();
        assert!(!text.contains("cluster=\"s/main\""), "{text}");
    }

    #[test]
    fn encodes_with_prefix() {
        let m = Metrics::default();
        m.api_writes
            .get_or_create(&WriteLabels {
                resource: "daemonsets".into(),
                verb: "PATCH".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                "ringmaster_operator_api_writes_total{resource=\"daemonsets\",verb=\"PATCH\"} 1"
            ),
            "{text}"
        );
    }
}
