//! Writes to the Node and the StorageNode. Labels by server-side apply with the agent's
//! field manager (so dropping a key from the applied set removes only ours), stale owned
//! keys that somebody else also set removed by name, and the taint by an
//! optimistic-concurrency merge patch (a Node's `spec.taints` is an atomic list: applying
//! it would take the whole list and drop other owners' taints).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use ringmaster_api::{keys, StorageNode, StorageNodeStatus};
use serde_json::json;

use super::labels;

fn apply_params() -> PatchParams {
    PatchParams::apply(keys::MANAGER_AGENT).force()
}

/// Make the Node's owned labels exactly `desired` (empty: remove all of ours, the record
/// and the `ringmaster.io/cluster` annotation naming `cluster`). Returns the Node as
/// written, or `None` when nothing needed writing.
pub async fn apply_labels(
    nodes: &Api<Node>,
    node: &Node,
    desired: &BTreeMap<String, String>,
    cluster: &str,
) -> kube::Result<Option<Node>> {
    let name = node.name_any();
    let current = node.labels();
    let owned_annotation = node.annotations().get(keys::OWNED_LABELS_ANNOTATION);
    let owned = labels::parse_owned(owned_annotation.map(String::as_str));
    let stale = labels::stale_labels(current, &owned, desired);
    let want_annotation = (!desired.is_empty()).then(|| labels::format_owned(desired));
    let labels_right = desired.iter().all(|(k, v)| current.get(k) == Some(v));
    let want_cluster = (!desired.is_empty()).then(|| cluster.to_string());
    let annotation_right = owned_annotation.cloned() == want_annotation
        && node.annotations().get(keys::CLUSTER_ANNOTATION).cloned() == want_cluster;
    if stale.is_empty() && labels_right && annotation_right {
        return Ok(None);
    }
    if !stale.is_empty() {
        // Owned by our record but (also) set by somebody else: remove exactly these keys.
        let nulls: serde_json::Map<_, _> = stale
            .iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect();
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": nulls}})),
            )
            .await?;
    }
    // Labels and the record of them in one request, so a crash never leaves a label unrecorded.
    let mut meta = json!({"name": name});
    if !desired.is_empty() {
        meta["labels"] = json!(desired);
        meta["annotations"] = json!({
            keys::OWNED_LABELS_ANNOTATION: want_annotation,
            keys::CLUSTER_ANNOTATION: cluster,
        });
    }
    let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": meta});
    nodes
        .patch(&name, &apply_params(), &Patch::Apply(body))
        .await
        .map(Some)
}

/// Put the Ringmaster taint on (`want`) or off the Node, keeping every other taint.
/// Starts from `node` as the agent knows it (its watch), reads the Node again only on a
/// write conflict. Returns the Node as written, or `None` when nothing needed writing.
pub async fn set_taint(nodes: &Api<Node>, node: &Node, want: bool) -> kube::Result<Option<Node>> {
    let name = node.name_any();
    let mut node = node.clone();
    let mut attempt = 0;
    loop {
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let Some(next) = labels::reconcile_taints(&current, want) else {
            return Ok(None);
        };
        let body = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "spec": {"taints": next},
        });
        match nodes
            .patch(
                &name,
                &PatchParams {
                    field_manager: Some(keys::MANAGER_AGENT.into()),
                    ..Default::default()
                },
                &Patch::Merge(body),
            )
            .await
        {
            Ok(written) => return Ok(Some(written)),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 8 => {
                attempt += 1;
                node = nodes.get(&name).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Create or update the StorageNode (metadata + spec) by server-side apply, owned by the Node
/// so the garbage collector removes it with the Node.
pub async fn apply_storage_node(
    api: &Api<StorageNode>,
    node: &Node,
    cluster: &str,
) -> kube::Result<StorageNode> {
    let name = node.name_any();
    let (ns, cname) = cluster.split_once('/').unwrap_or(("", cluster));
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.clone(),
        uid: node.uid().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    };
    let body = json!({
        "apiVersion": format!("{}/{}", ringmaster_api::GROUP, ringmaster_api::VERSION),
        "kind": "StorageNode",
        "metadata": {
            "name": name,
            "labels": {
                keys::LABEL_STORAGENODE_CLUSTER_NAMESPACE: ns,
                keys::LABEL_STORAGENODE_CLUSTER_NAME: cname,
            },
            "ownerReferences": [owner],
        },
        "spec": {"nodeName": name, "cluster": cluster},
    });
    api.patch(&name, &apply_params(), &Patch::Apply(body)).await
}

/// Apply the StorageNode status (status subresource).
pub async fn apply_status(
    api: &Api<StorageNode>,
    name: &str,
    status: &StorageNodeStatus,
) -> kube::Result<StorageNode> {
    let body = json!({
        "apiVersion": format!("{}/{}", ringmaster_api::GROUP, ringmaster_api::VERSION),
        "kind": "StorageNode",
        "status": status,
    });
    api.patch_status(name, &apply_params(), &Patch::Apply(body))
        .await
}
