//! Scheduling rules: which nodes a StorageCluster's agent DaemonSet runs on (the
//! scheduler's and the DaemonSet controller's own rules), which nodes an older cluster
//! holds, and which nodes a cluster left. Pure; no I/O.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use ringmaster_api::StorageCluster;

use crate::render;

/// Does `toleration` tolerate `taint` (the scheduler's rule)?
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref() {
        if !e.is_empty() && e != taint.effect {
            return false;
        }
    }
    match t.operator.as_deref() {
        Some("Exists") => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Is `node` one the cluster's agent DaemonSet runs on? The nodeSelector matches and
/// every NoSchedule/NoExecute taint is tolerated (taints under `node.kubernetes.io/` are
/// tolerated by every DaemonSet pod automatically). This is the DaemonSet's own
/// "desired" rule, so `status.desired` equals its `desiredNumberScheduled`.
pub fn selects(sc: &StorageCluster, node: &Node) -> bool {
    if !matches_node_selector(sc, node) {
        return false;
    }
    let tolerations = render::tolerations(sc);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// The node's labels match `spec.nodeSelector`. A node that stops matching loses its agent
/// pod (the DaemonSet controller deletes it); a new NoSchedule taint does not evict one.
pub fn matches_node_selector(sc: &StorageCluster, node: &Node) -> bool {
    let labels = node.labels();
    sc.spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// Nodes this cluster's agent left its mark on (the cluster annotation, or a StorageNode
/// in `reported`) whose labels no longer match `spec.nodeSelector`: their agent pod is
/// gone and SIGTERM restores nothing, so the operator must remove what it left there.
pub fn departed<'a>(
    sc: &StorageCluster,
    cluster_key: &str,
    nodes: impl IntoIterator<Item = &'a Node>,
    reported: &BTreeSet<String>,
) -> Vec<String> {
    nodes
        .into_iter()
        .filter(|n| !matches_node_selector(sc, n))
        .filter(|n| {
            n.annotations()
                .get(ringmaster_api::keys::CLUSTER_ANNOTATION)
                == Some(&cluster_key.to_string())
                || reported.contains(&n.name_any())
        })
        .map(|n| n.name_any())
        .collect()
}

/// Names of the nodes a cluster selects.
pub fn selection<'a>(
    sc: &StorageCluster,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> BTreeSet<String> {
    nodes
        .into_iter()
        .filter(|n| selects(sc, n))
        .map(|n| n.name_any())
        .collect()
}

/// Order of precedence between clusters that select the same node: the older one keeps
/// it (creation time, then namespace/name so the order is total).
fn precedence(sc: &StorageCluster) -> (Option<Timestamp>, String, String) {
    (
        sc.creation_timestamp().map(|t| t.0),
        sc.namespace().unwrap_or_default(),
        sc.name_any(),
    )
}

/// Nodes this cluster shares with older clusters, by the older cluster's `ns/name`. An
/// older cluster being deleted still holds its nodes until it is gone: its agents are
/// restoring them, and a second agent must not start there meanwhile.
pub fn conflicts<'a>(
    sc: &StorageCluster,
    selected: &BTreeSet<String>,
    others: impl IntoIterator<Item = &'a StorageCluster>,
    nodes: &[&Node],
) -> BTreeMap<String, BTreeSet<String>> {
    let me = precedence(sc);
    let mut out = BTreeMap::new();
    for o in others {
        if o.uid() == sc.uid() || precedence(o) >= me {
            continue;
        }
        let shared: BTreeSet<String> = nodes
            .iter()
            .filter(|n| selected.contains(&n.name_any()) && selects(o, n))
            .map(|n| n.name_any())
            .collect();
        if !shared.is_empty() {
            out.insert(
                format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                shared,
            );
        }
    }
    out
}

/// Nodes this cluster's DaemonSet must stay off: those an older cluster selects. Two
/// agents on one node would share its state dir, aio.toml, the sysctl and its sysctl.d
/// file, and deleting the later cluster would restore or remove what the first relies on.
pub fn excluded_nodes<'a>(
    sc: &StorageCluster,
    others: impl IntoIterator<Item = &'a StorageCluster>,
    nodes: &[&Node],
) -> BTreeSet<String> {
    let selected = selection(sc, nodes.iter().copied());
    conflicts(sc, &selected, others, nodes)
        .into_values()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, node, three_nodes};
    use ringmaster_api::keys;

    #[test]
    fn departed_nodes_are_ours_and_off_the_node_selector_only() {
        let sc = cluster("fast", 10, &[("tier", "storage")]);
        let key = "storage/fast";
        let tagged = |mut n: Node, cluster: &str| {
            n.metadata.annotations =
                Some([(keys::CLUSTER_ANNOTATION.to_string(), cluster.to_string())].into());
            n
        };
        let nodes = [
            // Still selected (a NoSchedule taint does not evict a running agent pod).
            tagged(
                node("in", &[("tier", "storage")], &[("x", "NoSchedule")]),
                key,
            ),
            // Left the selector, tagged by us: departed.
            tagged(node("left", &[("tier", "web")], &[]), key),
            // Left, tagged by another cluster, no report of ours: not ours to clean.
            tagged(node("other", &[], &[]), "storage/slow"),
            // Left, untagged, but it has our StorageNode: departed.
            node("reported", &[], &[]),
            // Never ours.
            node("never", &[], &[]),
        ];
        let reported = BTreeSet::from(["reported".to_string(), "in".to_string()]);
        assert_eq!(
            departed(&sc, key, &nodes, &reported),
            vec!["left".to_string(), "reported".to_string()]
        );
        // An empty nodeSelector selects every node: nothing departs.
        let all = cluster("fast", 10, &[]);
        assert!(departed(&all, key, &nodes, &reported).is_empty());
    }

    #[test]
    fn selection_follows_selector_and_tolerations_like_the_daemonset() {
        let nodes = three_nodes();
        let mut sc = cluster("fast", 10, &[("tier", "storage")]);
        let sel = selection(&sc, &nodes);
        assert_eq!(
            sel,
            BTreeSet::from(["n1".into(), "n2".into()]),
            "n3 taint not tolerated"
        );
        sc.spec.tolerations.push(Toleration {
            key: Some("kwok.x-k8s.io/node".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
        assert_eq!(selection(&sc, &nodes).len(), 3);
        // Our own taint and node.kubernetes.io/* taints never unselect a node.
        let tainted = node(
            "n4",
            &[("tier", "storage")],
            &[
                (keys::TAINT_IO_URING_UNSUPPORTED, "NoSchedule"),
                ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ],
        );
        assert!(selects(&sc, &tainted));
        // PreferNoSchedule does not keep a DaemonSet pod away.
        assert!(selects(
            &sc,
            &node("n5", &[("tier", "storage")], &[("x", "PreferNoSchedule")])
        ));
        // Empty selector: every node.
        let all = cluster("all", 10, &[]);
        assert_eq!(selection(&all, &nodes).len(), 3);
    }

    #[test]
    fn toleration_matching_rules() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = |key: Option<&str>, op: Option<&str>, val: Option<&str>, eff: Option<&str>| {
            Toleration {
                key: key.map(Into::into),
                operator: op.map(Into::into),
                value: val.map(Into::into),
                effect: eff.map(Into::into),
                ..Default::default()
            }
        };
        assert!(tolerates(&t(None, Some("Exists"), None, None), &taint));
        assert!(tolerates(&t(Some("k"), Some("Exists"), None, None), &taint));
        assert!(tolerates(
            &t(Some("k"), Some("Equal"), Some("v"), Some("NoSchedule")),
            &taint
        ));
        assert!(tolerates(&t(Some("k"), None, Some("v"), None), &taint));
        assert!(!tolerates(&t(Some("k"), None, Some("w"), None), &taint));
        assert!(!tolerates(
            &t(Some("k"), Some("Exists"), None, Some("NoExecute")),
            &taint
        ));
        assert!(!tolerates(
            &t(Some("j"), Some("Exists"), None, None),
            &taint
        ));
    }
}
