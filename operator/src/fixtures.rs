//! Test fixtures shared by the pure cores' unit tests: Nodes and StorageClusters as the
//! operator's watch caches hold them.

use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use ringmaster_api::{StorageCluster, StorageClusterSpec};

pub fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n.spec = Some(NodeSpec {
        taints: Some(
            taints
                .iter()
                .map(|(k, e)| Taint {
                    key: k.to_string(),
                    effect: e.to_string(),
                    value: Some("fake".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    n
}

pub fn cluster(name: &str, created: i64, selector: &[(&str, &str)]) -> StorageCluster {
    let mut sc = StorageCluster::new(name, StorageClusterSpec::default());
    sc.metadata.namespace = Some("storage".into());
    sc.metadata.uid = Some(format!("uid-{name}"));
    sc.metadata.generation = Some(3);
    sc.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    sc.spec.node_selector = selector
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sc
}

/// n1 and n2 selected by `tier=storage`; n3 too but behind the kwok taint; `other` never.
pub fn three_nodes() -> Vec<Node> {
    let fake = [("kwok.x-k8s.io/node", "NoSchedule")];
    vec![
        node("n1", &[("tier", "storage")], &[]),
        node("n2", &[("tier", "storage")], &[]),
        node("n3", &[("tier", "storage")], &fake),
        node("other", &[("tier", "web")], &[]),
    ]
}
