//! The `ringmaster.io/cleanup` finalizer: JSON patches that add and release it (guarded
//! by `test` operations so a concurrent edit fails instead of being overwritten), and the
//! leftover cleanup of a Node once the agents had their chance (pure, unit-tested).

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use ringmaster_api::keys;
use serde_json::{json, Value};

/// JSON pointer escaping of one path segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Patch that adds the finalizer, or `None` when it is already there.
pub fn add_patch<K: ResourceExt>(obj: &K) -> Option<Value> {
    let current = obj.finalizers();
    if current.iter().any(|f| f == keys::FINALIZER) {
        return None;
    }
    Some(if current.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [keys::FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": keys::FINALIZER},
        ])
    })
}

/// Patch that releases the finalizer, or `None` when it is not there.
pub fn remove_patch<K: ResourceExt>(obj: &K) -> Option<Value> {
    let i = obj.finalizers().iter().position(|f| f == keys::FINALIZER)?;
    let path = format!("/metadata/finalizers/{i}");
    Some(json!([
        {"op": "test", "path": path, "value": keys::FINALIZER},
        {"op": "remove", "path": path},
    ]))
}

/// The label keys an agent recorded as its own on this Node (only `ringmaster.io/` keys:
/// a corrupted annotation must never make us remove somebody else's label).
pub fn owned_labels(node: &Node) -> Vec<String> {
    node.annotations()
        .get(keys::OWNED_LABELS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|k| keys::is_ringmaster_key(k))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Is this Node managed by the cluster `ns/name` (or by no cluster in particular)?
pub fn managed_by(node: &Node, cluster_key: &str) -> bool {
    node.annotations()
        .get(keys::CLUSTER_ANNOTATION)
        .is_none_or(|c| c == cluster_key)
}

/// JSON patch that removes what a cluster's agent left on a Node: the labels listed in
/// its owned-labels annotation, that annotation, the cluster annotation, and the
/// Ringmaster taint. Guarded by the resourceVersion so a concurrent change makes it fail
/// (and the reconcile retry) instead of dropping a taint someone just added. `None`
/// when there is nothing to remove or another cluster manages the node.
pub fn node_cleanup_patch(node: &Node, cluster_key: &str) -> Option<Value> {
    if !managed_by(node, cluster_key) {
        return None;
    }
    let labels = node.labels();
    let annotations = node.annotations();
    let mut ops = Vec::new();
    for key in owned_labels(node) {
        if labels.contains_key(&key) {
            ops.push(json!({"op": "remove", "path": format!("/metadata/labels/{}", escape(&key))}));
        }
    }
    for key in [keys::OWNED_LABELS_ANNOTATION, keys::CLUSTER_ANNOTATION] {
        if annotations.contains_key(key) {
            ops.push(
                json!({"op": "remove", "path": format!("/metadata/annotations/{}", escape(key))}),
            );
        }
    }
    if let Some(taints) = node.spec.as_ref().and_then(|s| s.taints.as_ref()) {
        let kept: Vec<_> = taints
            .iter()
            .filter(|t| t.key != keys::TAINT_IO_URING_UNSUPPORTED)
            .collect();
        if kept.len() != taints.len() {
            ops.push(json!({"op": "replace", "path": "/spec/taints", "value": kept}));
        }
    }
    if ops.is_empty() {
        return None;
    }
    let rv = node.resource_version().unwrap_or_default();
    ops.insert(
        0,
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
    );
    Some(Value::Array(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use ringmaster_api::{StorageCluster, StorageClusterSpec};
    use std::collections::BTreeMap;

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)], taints: &[&str]) -> Node {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.resource_version = Some("42".into());
        n.metadata.labels = map(labels);
        n.metadata.annotations = map(annotations);
        n.spec = Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|k| Taint {
                        key: k.to_string(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    /// Applies a JSON patch the way the API server would (enough of RFC 6902 for us).
    fn apply(node: &Node, patch: &Value) -> Node {
        let mut doc = serde_json::to_value(node).unwrap();
        for op in patch.as_array().unwrap() {
            let path = op["path"].as_str().unwrap();
            match op["op"].as_str().unwrap() {
                "test" => assert_eq!(doc.pointer(path).unwrap(), &op["value"]),
                "remove" => {
                    let (parent, last) = path.rsplit_once('/').unwrap();
                    let last = last.replace("~1", "/").replace("~0", "~");
                    doc.pointer_mut(parent)
                        .unwrap()
                        .as_object_mut()
                        .unwrap()
                        .remove(&last)
                        .expect("removed key exists");
                }
                "replace" => *doc.pointer_mut(path).unwrap() = op["value"].clone(),
                o => panic!("unexpected op {o}"),
            }
        }
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn removes_only_owned_ringmaster_labels_and_our_taint() {
        let n = node(
            &[
                ("ringmaster.io/io-uring", "unsupported"),
                ("ringmaster.io/io-uring-reason", "ENOSYS"),
                ("ringmaster.io/not-listed", "x"),
                ("team", "storage"),
            ],
            &[
                (
                    keys::OWNED_LABELS_ANNOTATION,
                    "ringmaster.io/io-uring,ringmaster.io/io-uring-reason,team,ringmaster.io/ready",
                ),
                (keys::CLUSTER_ANNOTATION, "storage/fast"),
                ("other", "kept"),
            ],
            &[keys::TAINT_IO_URING_UNSUPPORTED, "dedicated"],
        );
        let p = node_cleanup_patch(&n, "storage/fast").unwrap();
        assert_eq!(p[0]["op"], "test");
        assert_eq!(p[0]["value"], "42");
        let after = apply(&n, &p);
        let labels: Vec<_> = after.labels().keys().cloned().collect();
        // `team` was listed but is not ours to remove; `not-listed` was never owned.
        assert_eq!(labels, ["ringmaster.io/not-listed", "team"]);
        let ann: Vec<_> = after.annotations().keys().cloned().collect();
        assert_eq!(ann, ["other"]);
        let taints: Vec<_> = after
            .spec
            .clone()
            .unwrap()
            .taints
            .unwrap()
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert_eq!(taints, ["dedicated"]);
        // Clean node: nothing to do.
        assert!(node_cleanup_patch(&after, "storage/fast").is_none());
    }

    #[test]
    fn leaves_nodes_of_another_cluster_alone() {
        let n = node(
            &[("ringmaster.io/ready", "true")],
            &[
                (keys::OWNED_LABELS_ANNOTATION, "ringmaster.io/ready"),
                (keys::CLUSTER_ANNOTATION, "storage/other"),
            ],
            &[],
        );
        assert!(node_cleanup_patch(&n, "storage/fast").is_none());
        assert!(node_cleanup_patch(&n, "storage/other").is_some());
    }

    #[test]
    fn finalizer_patches_are_guarded() {
        let mut sc = StorageCluster::new("fast", StorageClusterSpec::default());
        let p = add_patch(&sc).unwrap();
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/metadata/finalizers", "value": null})
        );
        sc.metadata.finalizers = Some(vec!["other/x".into()]);
        let p = add_patch(&sc).unwrap();
        assert_eq!(p[1]["path"], "/metadata/finalizers/-");
        assert!(remove_patch(&sc).is_none());
        sc.metadata.finalizers = Some(vec!["other/x".into(), keys::FINALIZER.into()]);
        assert!(add_patch(&sc).is_none());
        let p = remove_patch(&sc).unwrap();
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": keys::FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
    }
}
