//! Reports too old to trust. An agent renews its StorageNode's `heartbeatTime` (like a
//! node its Lease) and stamps it with the host's boot id. A report is stale when
//!
//! - the Node's `status.nodeInfo.bootID` (set by the kubelet at start) differs from the
//!   report's `bootId`: the node booted again and its agent has not reported since, so
//!   the raised sysctl and the probe may be gone; or
//! - no renewal for [`STALE_AFTER_HEARTBEATS`] × `heartbeatSeconds`: the agent is gone,
//!   hung, crash-looping or its image cannot be pulled.
//!
//! A stale node counts as unknown in the StorageCluster status, and the operator takes
//! the node's positive claims (`ringmaster.io/ready`, `ringmaster.io/aio-tuned`) off it,
//! so storage pods that select on them do not start on a node nobody vouches for. The
//! agent puts them back on its next pass. Reports without these fields (agents from
//! before them) are never judged stale. Pure; the controller does the I/O.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use ringmaster_api::{keys, StorageNode, STALE_AFTER_HEARTBEATS};
use serde_json::{json, Value};

/// Why a report is not trusted any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The node booted again since the report.
    Rebooted { reported: String, now: String },
    /// No heartbeat for `age` seconds (the limit is `limit`).
    Silent { age: i64, limit: i64 },
}

impl Stale {
    /// For condition messages: what is wrong, in a few words.
    pub fn describe(&self) -> String {
        match self {
            Stale::Rebooted { .. } => "rebooted since its last report".into(),
            // No age here: a condition message must not change while nothing else does.
            Stale::Silent { limit, .. } => format!("no agent heartbeat for over {limit}s"),
        }
    }

    /// Longer form for Events and logs.
    pub fn explain(&self) -> String {
        match self {
            Stale::Rebooted { reported, now } => format!(
                "the node booted again (boot id {reported} -> {now}) and its agent has not reported since"
            ),
            Stale::Silent { age, limit } => format!(
                "its agent has not renewed the report for {age}s (limit {limit}s = {STALE_AFTER_HEARTBEATS} heartbeats): it is gone, hung or cannot start"
            ),
        }
    }
}

fn node_boot_id(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.boot_id.as_str())
        .filter(|b| !b.is_empty())
}

/// Seconds a report stays fresh after its last heartbeat, if it carries one.
fn limit(sn: &StorageNode) -> Option<(Timestamp, i64)> {
    let st = sn.status.as_ref()?;
    let at = st.heartbeat_time.as_ref()?.0;
    let every = st.heartbeat_seconds.filter(|s| *s > 0)?;
    Some((at, every.saturating_mul(STALE_AFTER_HEARTBEATS)))
}

/// Is `sn` (the report of `node`) too old to trust at `now`?
pub fn staleness(sn: &StorageNode, node: Option<&Node>, now: Timestamp) -> Option<Stale> {
    let reported = sn.status.as_ref().and_then(|s| s.boot_id.as_deref());
    if let (Some(reported), Some(current)) = (reported, node.and_then(node_boot_id)) {
        if reported != current {
            return Some(Stale::Rebooted {
                reported: reported.into(),
                now: current.into(),
            });
        }
    }
    let (at, limit) = limit(sn)?;
    let age = now.as_second() - at.as_second();
    (age > limit).then_some(Stale::Silent { age, limit })
}

/// How long until the first of these fresh reports turns stale (the controller looks
/// again then; nothing else would wake it when an agent falls silent).
pub fn next_expiry<'a>(
    reports: impl IntoIterator<Item = &'a StorageNode>,
    now: Timestamp,
) -> Option<Duration> {
    reports
        .into_iter()
        .filter_map(limit)
        .map(|(at, limit)| at.as_second() + limit - now.as_second())
        .filter(|left| *left >= 0)
        .min()
        .map(|left| Duration::from_secs(left as u64 + 1))
}

/// The labels a stale node must not keep: its claims about the running system.
pub const CLAIMS: [&str; 2] = [keys::LABEL_READY, keys::LABEL_AIO_TUNED];

/// JSON patch removing [`CLAIMS`] from a node that cluster `cluster_key`'s agent
/// labelled (its cluster annotation, and the key in its owned-labels record); guarded by
/// the resourceVersion. `None` when there is nothing of ours to remove.
pub fn claims_patch(node: &Node, cluster_key: &str) -> Option<Value> {
    if node
        .annotations()
        .get(keys::CLUSTER_ANNOTATION)
        .map(String::as_str)
        != Some(cluster_key)
    {
        return None;
    }
    let owned = crate::finalizer::owned_labels(node);
    let labels = node.labels();
    let mut ops: Vec<Value> = CLAIMS
        .iter()
        .filter(|k| labels.contains_key(**k) && owned.iter().any(|o| o.as_str() == **k))
        .map(|k| json!({"op": "remove", "path": format!("/metadata/labels/{}", k.replace('~', "~0").replace('/', "~1"))}))
        .collect();
    if ops.is_empty() {
        return None;
    }
    ops.insert(
        0,
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": node.resource_version().unwrap_or_default()}),
    );
    Some(Value::Array(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use ringmaster_api::{StorageNodeSpec, StorageNodeStatus};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn report(boot: Option<&str>, heartbeat: Option<i64>, every: Option<i64>) -> StorageNode {
        let mut sn = StorageNode::new(
            "n1",
            StorageNodeSpec {
                node_name: "n1".into(),
                cluster: "storage/main".into(),
            },
        );
        sn.status = Some(StorageNodeStatus {
            boot_id: boot.map(String::from),
            heartbeat_time: heartbeat.map(|s| Time(at(s))),
            heartbeat_seconds: every,
            ..Default::default()
        });
        sn
    }

    fn node(boot: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.resource_version = Some("42".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.status = Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                boot_id: boot.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        n
    }

    #[test]
    fn silent_after_three_heartbeats_and_not_before() {
        let sn = report(Some("b1"), Some(0), Some(33));
        let n = node("b1", &[], &[]);
        assert_eq!(staleness(&sn, Some(&n), at(99)), None);
        assert_eq!(
            staleness(&sn, Some(&n), at(100)),
            Some(Stale::Silent {
                age: 100,
                limit: 99
            })
        );
        assert_eq!(next_expiry([&sn], at(90)), Some(Duration::from_secs(10)));
        assert_eq!(next_expiry([&sn], at(100)), None, "already stale");
    }

    #[test]
    fn a_new_boot_id_on_the_node_is_stale_at_once() {
        let sn = report(Some("b1"), Some(0), Some(33));
        let d = staleness(&sn, Some(&node("b2", &[], &[])), at(1)).unwrap();
        assert!(matches!(d, Stale::Rebooted { .. }), "{d:?}");
        assert!(d.explain().contains("b1 -> b2"), "{}", d.explain());
        // A node whose kubelet reports no boot id (kwok) is judged by heartbeats only.
        assert_eq!(staleness(&sn, Some(&node("", &[], &[])), at(1)), None);
    }

    #[test]
    fn reports_without_heartbeat_fields_are_never_stale() {
        let old = report(None, None, None);
        assert_eq!(
            staleness(&old, Some(&node("b2", &[], &[])), at(100_000)),
            None
        );
        assert_eq!(next_expiry([&old], at(0)), None);
    }

    #[test]
    fn claims_patch_removes_only_our_recorded_claims() {
        let ours = [
            (keys::CLUSTER_ANNOTATION, "storage/main"),
            (
                keys::OWNED_LABELS_ANNOTATION,
                "ringmaster.io/aio-tuned,ringmaster.io/io-uring,ringmaster.io/ready",
            ),
        ];
        let labels = [
            (keys::LABEL_READY, "true"),
            (keys::LABEL_AIO_TUNED, "true"),
            ("ringmaster.io/io-uring", "supported"),
            ("team", "storage"),
        ];
        let p = claims_patch(&node("b", &labels, &ours), "storage/main").unwrap();
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "remove", "path": "/metadata/labels/ringmaster.io~1ready"},
                {"op": "remove", "path": "/metadata/labels/ringmaster.io~1aio-tuned"},
            ])
        );
        // Another cluster's node, or no annotation: not ours to touch.
        assert_eq!(claims_patch(&node("b", &labels, &ours), "other/x"), None);
        assert_eq!(claims_patch(&node("b", &labels, &[]), "storage/main"), None);
        // Already gone: nothing to do.
        assert_eq!(
            claims_patch(&node("b", &[("team", "s")], &ours), "storage/main"),
            None
        );
    }
}
