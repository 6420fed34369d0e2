//! Simulated nodes: Node objects that kwok (started by hack/cluster.sh) keeps Ready and
//! whose pods it turns Running. No kubelet runs, so containers never start: tests run
//! the project binaries themselves with [`crate::spawn_bin`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::wait::wait_for;

/// The annotation kwok manages nodes by (`--manage-nodes-with-annotation-selector`).
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// The taint kwok nodes carry by convention, so only pods that tolerate it land there.
pub const KWOK_TAINT_KEY: &str = "kwok.x-k8s.io/node";

/// A fake node to create: `FakeNode::new("n1").label("k", "v").create(&client).await`.
#[derive(Clone, Debug)]
pub struct FakeNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl FakeNode {
    /// A node with the kwok annotation, the usual `kubernetes.io/*` labels and the
    /// `kwok.x-k8s.io/node=fake:NoSchedule` taint.
    pub fn new(name: &str) -> Self {
        let labels = [
            ("kubernetes.io/hostname", name),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("type", "kwok"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        FakeNode {
            name: name.to_string(),
            labels,
            taints: vec![Taint {
                key: KWOK_TAINT_KEY.into(),
                value: Some("fake".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }],
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push(Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            ..Default::default()
        });
        self
    }

    /// Drops the kwok taint (then any pod may be scheduled there).
    pub fn without_kwok_taint(mut self) -> Self {
        self.taints.retain(|t| t.key != KWOK_TAINT_KEY);
        self
    }

    /// Creates the Node and waits until kwok reports it Ready. The node is deleted when
    /// the returned handle is dropped.
    pub async fn create(self, client: &Client) -> FakeNodeHandle {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels),
                annotations: Some([(KWOK_ANNOTATION.to_string(), "fake".to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(self.taints),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating fake node {}: {e}", self.name));
        let handle = FakeNodeHandle {
            name: self.name.clone(),
        };
        wait_node_ready(client, &self.name).await;
        handle
    }
}

/// A fake node that exists until this is dropped (`RINGMASTER_E2E_KEEP=1` keeps it).
pub struct FakeNodeHandle {
    pub name: String,
}

impl FakeNodeHandle {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for FakeNodeHandle {
    fn drop(&mut self) {
        if std::env::var_os("RINGMASTER_E2E_KEEP").is_some() {
            return;
        }
        let out = crate::kubectl::kubectl([
            "delete",
            "node",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
        if !out.success() {
            eprintln!("deleting node {}: {}", self.name, out.stderr);
        }
    }
}

/// Waits until the node's Ready condition is True (kwok sets it within a second or so).
pub async fn wait_node_ready(client: &Client, name: &str) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    wait_for(
        Duration::from_secs(60),
        &format!("node {name} Ready (set by kwok)"),
        || async {
            let node = api.get(name).await?;
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            anyhow::ensure!(ready, "Ready is not True yet");
            Ok(node)
        },
    )
    .await
}

/// Deletes a node (ignores one that is already gone).
pub async fn delete_node(client: &Client, name: &str) {
    match Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("deleting node {name}: {e}"),
    }
}
