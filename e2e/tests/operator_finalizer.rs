//! Deleting a StorageCluster: the operator's finalizer waits (bounded, visibly) for the
//! agents to restore their nodes, then removes what the silent ones left (only labels
//! they recorded as owned, and the Ringmaster taint), deletes the StorageNodes and the
//! agents' ClusterRoleBinding, and releases the cluster; the garbage collector removes
//! the DaemonSet and ServiceAccount.

use crate::operator_support;

use ringmaster_api::reasons;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use operator_support::*;
use ringmaster_api::{cluster_conditions as cc, keys, StorageCluster, StorageNode};
use ringmaster_e2e::{
    client, install_crds, unique_name, wait_for, FakeNode, FakeNodeHandle, TestNamespace,
};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const CLEANUP_TIMEOUT: u64 = 12;

async fn gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(
        Duration::from_secs(60),
        &format!("{what} {name} deleted"),
        || async {
            match api.get_opt(name).await? {
                None => Ok(()),
                Some(_) => anyhow::bail!("still there"),
            }
        },
    )
    .await
}

/// A kwok node in `pool` carrying marks that are not the agent's (checked by
/// [`assert_only_foreign_marks_left`]).
async fn pool_node_with_foreign_marks(c: &kube::Client, name: &str, pool: &str) -> FakeNodeHandle {
    FakeNode::new(name)
        .label("ringmaster-e2e/pool", pool)
        .label("ringmaster.io/not-ours", "kept")
        .label("team", "storage")
        .create(c)
        .await
}

/// Nothing Ringmaster's agent put on `node` is left (its labels, annotations, taint), and
/// what others put there is (the test's `ringmaster.io/not-ours` and `team` labels, kwok's taint).
fn assert_only_foreign_marks_left(node: &Node) {
    let name = node.name_any();
    let labels = node.labels();
    for k in keys::AGENT_LABELS {
        assert!(
            !labels.contains_key(k),
            "{name}: {k} left behind: {labels:?}"
        );
    }
    assert_eq!(
        labels.get("ringmaster.io/not-ours").map(String::as_str),
        Some("kept"),
        "{name}: a label nobody recorded as owned is kept"
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("storage"));
    for a in [keys::OWNED_LABELS_ANNOTATION, keys::CLUSTER_ANNOTATION] {
        assert!(!node.annotations().contains_key(a), "{name}: {a} left");
    }
    let taints = node.spec.clone().unwrap().taints.unwrap_or_default();
    assert!(
        taints
            .iter()
            .all(|t| t.key != keys::TAINT_IO_URING_UNSUPPORTED),
        "{name}: taint left"
    );
    assert!(
        taints.iter().any(|t| t.key == "kwok.x-k8s.io/node"),
        "{name}: foreign taint kept"
    );
}

#[tokio::test]
async fn delete_waits_for_agents_then_cleans_leftovers_and_releases() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-final").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let pool = unique_name("pool");
    let names: Vec<String> = (1..=3).map(|i| unique_name(&format!("fin{i}"))).collect();
    let mut handles = Vec::new();
    for name in &names {
        handles.push(pool_node_with_foreign_marks(&c, name, &pool).await);
    }
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
    let timeout = CLEANUP_TIMEOUT.to_string();
    let _op = start_operator(&id, "final-op", &["--cleanup-timeout", &timeout]);
    create_cluster(
        &c,
        cluster_manifest(
            &n,
            "gone",
            &pool,
            json!({"sysctl": {"restoreOnDelete": true}, "unsupportedNodes": "Taint"}),
        ),
    )
    .await;
    let pods = wait_agent_pods(&c, &n, "gone", &nodes).await;
    let mut agents = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let a = agent_client(&n, "gone", &pods[*node]).await;
        let r = if i == 2 {
            Report::failing(1, "EPERM", 1)
        } else {
            Report::ok(1)
        };
        report(&a, &n, "gone", node, &r).await;
        agent_label_node(&a, &n, "gone", node, i == 2).await;
        agents.push(a);
    }
    wait_status(&c, &n, "gone", "3 reporting", T, |sc| {
        anyhow::ensure!(counts(sc).1 == 3, "counts {:?}", counts(sc));
        Ok(())
    })
    .await;
    let sc_api: Api<StorageCluster> = Api::namespaced(c.clone(), &n);
    let sc = sc_api.get("gone").await.unwrap();
    assert!(
        sc.finalizers().contains(&keys::FINALIZER.to_string()),
        "finalizer added"
    );

    // Delete (background propagation, as kubectl does).
    let deleted = Instant::now();
    sc_api
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let sc = wait_status(
        &c,
        &n,
        "gone",
        "Finalizing=True WaitingForAgents",
        T,
        |sc| {
            let f = cond(sc, cc::FINALIZING).ok_or_else(|| anyhow::anyhow!("no Finalizing yet"))?;
            anyhow::ensure!(
                f.status == "True" && f.reason == reasons::WAITING_FOR_AGENTS,
                "{f:?}"
            );
            anyhow::ensure!(f.message.contains("3 of 3 nodes"), "{}", f.message);
            Ok(())
        },
    )
    .await;
    assert!(
        cond(&sc, cc::FINALIZING)
            .unwrap()
            .message
            .contains("--cleanup-timeout 12s"),
        "the condition says how long it waits"
    );
    // The agents still run while the cluster is being deleted (they do the restoring).
    assert!(Api::<DaemonSet>::namespaced(c.clone(), &n)
        .get_opt("gone-agent")
        .await
        .unwrap()
        .is_some());

    // The first agent restores its node and says so; the others stay silent.
    let node_api: Api<Node> = Api::all(agents[0].clone());
    let remove: serde_json::Map<String, serde_json::Value> = [
        keys::LABEL_IO_URING,
        keys::LABEL_READY,
        keys::LABEL_AIO_TUNED,
    ]
    .iter()
    .map(|k| (k.to_string(), serde_json::Value::Null))
    .collect();
    node_api
        .patch(
            nodes[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": remove, "annotations": {
                keys::OWNED_LABELS_ANNOTATION: null, keys::CLUSTER_ANNOTATION: null}}})),
        )
        .await
        .unwrap();
    report(
        &agents[0],
        &n,
        "gone",
        nodes[0],
        &Report {
            restored: true,
            ..Report::ok(1)
        },
    )
    .await;
    wait_status(
        &c,
        &n,
        "gone",
        "Finalizing lists the 2 silent nodes",
        T,
        |sc| {
            let f = cond(sc, cc::FINALIZING).unwrap();
            anyhow::ensure!(f.message.contains("2 of 3 nodes"), "{}", f.message);
            anyhow::ensure!(!f.message.contains(nodes[0]), "{}", f.message);
            Ok(())
        },
    )
    .await;

    // After the timeout the operator cleans up and releases the cluster.
    gone(&sc_api, "gone", "StorageCluster").await;
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_secs(CLEANUP_TIMEOUT - 2),
        "released after {took:?}, before the cleanup timeout"
    );
    let admin_nodes: Api<Node> = Api::all(c.clone());
    for name in &nodes {
        assert_only_foreign_marks_left(&admin_nodes.get(name).await.unwrap());
    }
    let sns: Api<StorageNode> = Api::all(c.clone());
    for name in &nodes {
        assert!(
            sns.get_opt(name).await.unwrap().is_none(),
            "StorageNode {name} deleted"
        );
    }
    gone(
        &Api::<ClusterRoleBinding>::all(c.clone()),
        &format!("ringmaster-agent-{n}-gone"),
        "ClusterRoleBinding",
    )
    .await;
    // Owner references: the garbage collector removes the DaemonSet and ServiceAccount.
    gone(
        &Api::<DaemonSet>::namespaced(c.clone(), &n),
        "gone-agent",
        "DaemonSet",
    )
    .await;
    gone(
        &Api::<ServiceAccount>::namespaced(c.clone(), &n),
        "gone-agent",
        "ServiceAccount",
    )
    .await;

    let ev = wait_event(&n, "gone", reasons::CLEANUP_TIMED_OUT).await;
    assert!(ev.contains("1 of 3 agents restored their nodes"), "{ev}");
    assert!(ev.contains(nodes[1]) && ev.contains(nodes[2]), "{ev}");
    drop(handles);
}

#[tokio::test]
async fn delete_with_every_agent_restored_releases_at_once() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-final2").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let pool = unique_name("pool");
    let name = unique_name("fin");
    let _h = FakeNode::new(&name)
        .label("ringmaster-e2e/pool", &pool)
        .create(&c)
        .await;
    let _op = start_operator(&id, "final-op2", &["--cleanup-timeout", "600"]);
    create_cluster(&c, cluster_manifest(&n, "quick", &pool, json!({}))).await;
    let pods = wait_agent_pods(&c, &n, "quick", &[&name]).await;
    let a = agent_client(&n, "quick", &pods[&name]).await;
    report(&a, &n, "quick", &name, &Report::ok(1)).await;
    wait_status(&c, &n, "quick", "reporting", T, |sc| {
        anyhow::ensure!(counts(sc).1 == 1, "counts {:?}", counts(sc));
        Ok(())
    })
    .await;
    let sc_api: Api<StorageCluster> = Api::namespaced(c.clone(), &n);
    sc_api
        .delete("quick", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    report(
        &a,
        &n,
        "quick",
        &name,
        &Report {
            restored: true,
            ..Report::ok(1)
        },
    )
    .await;
    gone(&sc_api, "quick", "StorageCluster").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "released without waiting for the 600 s timeout"
    );
    let ev = wait_event(&n, "quick", reasons::CLEANUP_COMPLETE).await;
    assert!(ev.contains("1 of 1 agents restored their nodes"), "{ev}");
}

#[tokio::test]
async fn a_node_leaving_the_node_selector_is_released() {
    // The admin takes a node out of the storage pool. The DaemonSet controller deletes its
    // agent pod, and a SIGTERMed agent restores nothing (a rolling update must not strip
    // labels), so the operator removes what the agent left there: above all the NoSchedule
    // taint, which would otherwise keep every pod off a node that is no longer storage.
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-leave").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let pool = unique_name("pool");
    let (stay, leave) = (unique_name("stay"), unique_name("leave"));
    let mut handles = Vec::new();
    for name in [&stay, &leave] {
        handles.push(pool_node_with_foreign_marks(&c, name, &pool).await);
    }
    let _op = start_operator(&id, "leave-op", &[]);
    create_cluster(
        &c,
        cluster_manifest(&n, "shrink", &pool, json!({"unsupportedNodes": "Taint"})),
    )
    .await;
    let pods = wait_agent_pods(&c, &n, "shrink", &[&stay, &leave]).await;
    for (node, failing) in [(&stay, false), (&leave, true)] {
        let a = agent_client(&n, "shrink", &pods[node.as_str()]).await;
        let r = if failing {
            Report::failing(1, "EPERM", 1)
        } else {
            Report::ok(1)
        };
        report(&a, &n, "shrink", node, &r).await;
        agent_label_node(&a, &n, "shrink", node, failing).await;
    }
    wait_status(&c, &n, "shrink", "2 reporting", T, |sc| {
        anyhow::ensure!(counts(sc).1 == 2, "counts {:?}", counts(sc));
        Ok(())
    })
    .await;

    let admin_nodes: Api<Node> = Api::all(c.clone());
    admin_nodes
        .patch(
            &leave,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ringmaster-e2e/pool": null}}})),
        )
        .await
        .unwrap();
    wait_agent_pods(&c, &n, "shrink", &[&stay]).await;
    let sns: Api<StorageNode> = Api::all(c.clone());
    wait_for(T, "the departed node released", || async {
        let node = admin_nodes.get(&leave).await?;
        let taints = node
            .spec
            .clone()
            .unwrap_or_default()
            .taints
            .unwrap_or_default();
        anyhow::ensure!(
            taints
                .iter()
                .all(|t| t.key != keys::TAINT_IO_URING_UNSUPPORTED),
            "taint still there"
        );
        anyhow::ensure!(
            !node.labels().contains_key(keys::LABEL_IO_URING),
            "labels still there"
        );
        anyhow::ensure!(
            sns.get_opt(&leave).await?.is_none(),
            "StorageNode still there"
        );
        Ok(())
    })
    .await;
    assert_only_foreign_marks_left(&admin_nodes.get(&leave).await.unwrap());
    let ev = wait_event(&n, "shrink", reasons::NODE_RELEASED).await;
    assert!(
        ev.contains(&leave) && ev.contains("spec.nodeSelector"),
        "{ev}"
    );

    // The node that stays keeps everything; the status counts one node.
    let kept = admin_nodes.get(&stay).await.unwrap();
    assert_eq!(
        kept.labels().get(keys::LABEL_READY).map(String::as_str),
        Some("true")
    );
    assert!(kept.annotations().contains_key(keys::CLUSTER_ANNOTATION));
    assert!(sns.get_opt(&stay).await.unwrap().is_some());
    wait_status(&c, &n, "shrink", "1 desired, 1 reporting", T, |sc| {
        let k = counts(sc);
        anyhow::ensure!((k.0, k.1) == (1, 1), "counts {k:?}");
        Ok(())
    })
    .await;
    drop(handles);
}
