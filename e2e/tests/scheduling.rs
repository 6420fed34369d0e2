//! The labels and taint the agents write steer the real scheduler: simulated
//! nodes whose readers report supported / ENOSYS / EPERM (the same fleet as agent_nodes.rs),
//! and the storage workloads of examples/ placed by the real DaemonSet controller and
//! kube-scheduler (kwok turns the pods Running).
//!
//! DaemonSet semantics these tests rely on (pkg/controller/daemon, `NodeShouldRunDaemonPod`):
//! - a node whose labels do not match the template's *required* node affinity gets no pod,
//!   and a pod already there is deleted (should-not-run and should-not-continue-running);
//! - a node with an untolerated `NoSchedule` taint gets no new pod, but a pod already there
//!   keeps running (`NoSchedule` does not evict); delete it and it is not recreated.
//!
//! `status.desiredNumberScheduled` is the controller's own count of nodes that should run
//! the pod, so it is checked alongside the pods themselves.
//!
//! Needs what agent_nodes.rs needs: `KUBECONFIG`, `RINGMASTER_BIN_DIR` (ringmaster-agent,
//! seccomp-exec), helm, root.

use crate::agent_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_support::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use ringmaster_api::keys;
use ringmaster_e2e::{repo_root, wait_for};
use serde_json::json;

/// A DaemonSet of examples/ as JSON.
fn example(file: &str) -> serde_json::Value {
    let path = repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let ds: serde_json::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not YAML: {e}"));
    assert_eq!(ds["kind"], "DaemonSet", "{file}");
    ds
}

/// The same DaemonSet under another name (and pod label `app`).
fn renamed(mut ds: serde_json::Value, name: &str) -> serde_json::Value {
    ds["metadata"]["name"] = json!(name);
    ds["spec"]["selector"]["matchLabels"]["app"] = json!(name);
    ds["spec"]["template"]["metadata"]["labels"]["app"] = json!(name);
    ds
}

/// Creates `ds` in the test's namespace, confined to this test's nodes (the fleet label)
/// and tolerating kwok's fake-node taint plus `extra_tolerations` only. Returns its name,
/// which is also its pods' `app` label.
async fn create_ds(
    f: &Fleet,
    mut ds: serde_json::Value,
    extra_tolerations: &[serde_json::Value],
) -> String {
    let spec = &mut ds["spec"]["template"]["spec"];
    spec["nodeSelector"] = json!({ FLEET_LABEL: f.ns() });
    let mut tol =
        vec![json!({"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"})];
    tol.extend(extra_tolerations.iter().cloned());
    spec["tolerations"] = json!(tol);
    let ds: DaemonSet = serde_json::from_value(ds).unwrap();
    let name = ds.name_any();
    assert_eq!(
        ds.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()["app"],
        name
    );
    Api::<DaemonSet>::namespaced(f.client.clone(), f.ns())
        .create(&PostParams::default(), &ds)
        .await
        .unwrap_or_else(|e| panic!("creating DaemonSet {name}: {e}"));
    name
}

/// Nodes that have a (not terminating) pod of DaemonSet `app`, and the Running ones.
async fn pods_of(f: &Fleet, app: &str) -> (BTreeSet<String>, BTreeSet<String>, Vec<Pod>) {
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), f.ns());
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items;
    let live: Vec<Pod> = list
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut any = BTreeSet::new();
    let mut running = BTreeSet::new();
    for p in &live {
        if let Some(n) = placed_on(p) {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                running.insert(n.clone());
            }
            any.insert(n);
        }
    }
    (any, running, live)
}

/// The node a pod is for: bound, or (a DaemonSet pod, pinned by affinity before the
/// scheduler binds it) from creation on, so a pod made but not yet bound still counts.
fn placed_on(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .or_else(|| {
            let aff = serde_json::to_value(p.spec.as_ref()?.affinity.as_ref()?).ok()?;
            aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
                .as_str()
                .map(String::from)
        })
}

/// Every node any pod of `app` was placed on, from a pod watch started before the pods exist:
/// what the test asserts "throughout", not only at the ends of its stages.
struct Placements {
    nodes: Arc<Mutex<BTreeSet<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    watch: tokio::task::JoinHandle<()>,
}

impl Placements {
    /// Returns once the watch has listed (no pod of `app` can be missed after this).
    async fn watch(f: &Fleet, app: &str) -> Placements {
        let api: Api<Pod> = Api::namespaced(f.client.clone(), f.ns());
        let cfg = watcher::Config::default().labels(&format!("app={app}"));
        let nodes: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (listed, is_listed) = tokio::sync::oneshot::channel();
        let (sink, errs) = (Arc::clone(&nodes), Arc::clone(&errors));
        let watch = tokio::spawn(async move {
            let mut listed = Some(listed);
            let mut events = std::pin::pin!(watcher(api, cfg));
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        if let Some(n) = placed_on(&p) {
                            sink.lock().unwrap().insert(n);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(l) = listed.take() {
                            let _ = l.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => errs.lock().unwrap().push(e.to_string()),
                }
            }
        });
        is_listed.await.expect("pod watch listed");
        Placements {
            nodes,
            errors,
            watch,
        }
    }

    /// Stop watching; every node seen. Panics if the watch failed (it could have missed a pod).
    fn stop(self) -> BTreeSet<String> {
        self.watch.abort();
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "the pod watch failed: {errors:?}");
        let nodes = self.nodes.lock().unwrap().clone();
        nodes
    }
}

async fn desired(f: &Fleet, ds: &str) -> i32 {
    Api::<DaemonSet>::namespaced(f.client.clone(), f.ns())
        .get(ds)
        .await
        .unwrap()
        .status
        .map_or(-1, |s| s.desired_number_scheduled)
}

/// Waits until the pods of `app` are Running on exactly `want` (and on no other node), and the
/// controller wants exactly that many; then holds for a few seconds to catch a late pod.
async fn wait_placed(f: &Fleet, app: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let check = || async {
        let (any, running, _) = pods_of(f, app).await;
        anyhow::ensure!(
            any == want && running == want,
            "pods of {app} on {any:?} (running on {running:?}), want exactly {want:?}"
        );
        let d = desired(f, app).await;
        anyhow::ensure!(
            d == want.len() as i32,
            "desiredNumberScheduled {d}, want {}",
            want.len()
        );
        Ok(())
    };
    wait_for(T, &format!("{app} placed on exactly {want:?}"), check).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_for(
        Duration::from_secs(1),
        &format!("{app} still only on {want:?}"),
        check,
    )
    .await;
}

/// Waits for the node's `ringmaster.io/io-uring` label.
async fn wait_label(f: &Fleet, node: &str, value: &str) {
    wait_for(T, &format!("{node} labelled io-uring={value}"), || async {
        let l = ringmaster_labels(&f.node(node).await);
        anyhow::ensure!(
            l.get(keys::LABEL_IO_URING).map(String::as_str) == Some(value)
                && l.get(keys::LABEL_READY).map(String::as_str) == Some("true"),
            "{l:?}"
        );
        Ok(())
    })
    .await;
}

/// Waits until `node` carries `n` ringmaster taints.
async fn wait_taints(f: &Fleet, node: &str, n: usize) {
    wait_for(T, &format!("{n} ringmaster taint(s) on {node}"), || async {
        let t = ringmaster_taints(&f.node(node).await);
        anyhow::ensure!(t == n, "{t}");
        Ok(())
    })
    .await
}

/// Restarts a node's reader in a new sandbox: the node's verdict changes with no agent restart.
fn restart_reader(f: &mut Fleet, node: &str, uring: Uring) {
    let a = f.agent(node);
    a.reader.take(); // SIGTERM, waited for
    a.uring = uring;
    a.start_reader();
}

#[tokio::test]
async fn affinity_workload_lands_only_on_supported_nodes_and_follows_the_verdict() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create(
        "sched",
        &[
            Uring::Works,
            Uring::Fails("ENOSYS"),
            Uring::Fails("EPERM"),
            Uring::Works,
        ],
    )
    .await;
    let nodes: Vec<String> = f.agents.iter().map(|a| a.node.clone()).collect();
    let (flip, enosys, eperm, steady) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    // Label only: no taint, so only the affinity keeps the workload off (the taint case is
    // the next test).
    f.start_and_wait_applied("unsupportedNodes: Label\nsysctl: {aioMaxNr: 65536}")
        .await;
    wait_label(&f, flip, "supported").await;
    wait_label(&f, steady, "supported").await;
    wait_label(&f, enosys, "unsupported").await;
    wait_label(&f, eperm, "unsupported").await;
    for n in &nodes {
        assert_eq!(
            ringmaster_taints(&f.node(n).await),
            0,
            "Label policy tainted {n}"
        );
    }

    // Control: the same pod without the affinity lands on every node (so the assertions
    // below are about the affinity, not about nodes that take no pods at all).
    let mut control = renamed(example("storage-workload.yaml"), "control");
    control["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("affinity")
        .expect("the example has an affinity");
    create_ds(&f, control, &[]).await;
    let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
    wait_placed(&f, "control", &all).await;

    // The workload: only the supported, ready nodes.
    let ds = create_ds(&f, example("storage-workload.yaml"), &[]).await;
    wait_placed(&f, &ds, &[flip, steady]).await;

    // `flip` turns unsupported: its reader restarts under a seccomp filter (ENOSYS). The
    // label changes, the affinity no longer matches, and the controller takes the pod off.
    restart_reader(&mut f, flip, Uring::Fails("ENOSYS"));
    wait_label(&f, flip, "unsupported").await;
    wait_placed(&f, &ds, &[steady]).await;

    // Supported again: the pod returns.
    restart_reader(&mut f, flip, Uring::Works);
    wait_label(&f, flip, "supported").await;
    wait_placed(&f, &ds, &[flip, steady]).await;
}

#[tokio::test]
async fn taint_policy_keeps_pods_without_a_toleration_off_unsupported_nodes() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create("sched-taint", &[Uring::Works, Uring::Fails("ENOSYS")]).await;
    let (flip, bad) = (f.agents[0].node.clone(), f.agents[1].node.clone());
    f.start_and_wait_applied("unsupportedNodes: Taint\nsysctl: {aioMaxNr: 65536}")
        .await;
    wait_taints(&f, &bad, 1).await;
    wait_taints(&f, &flip, 0).await;

    // No affinity: only the taint keeps it off the unsupported node.
    let workload = example("storage-workload-taint.yaml");
    let placements = Placements::watch(&f, workload["metadata"]["name"].as_str().unwrap()).await;
    let ds = create_ds(&f, workload, &[]).await;
    wait_placed(&f, &ds, &[&flip]).await;

    // Control: the same DaemonSet tolerating our taint goes to both nodes.
    let tolerating = create_ds(
        &f,
        renamed(example("storage-workload-taint.yaml"), "tolerating"),
        &[json!({"key": keys::TAINT_IO_URING_UNSUPPORTED, "operator": "Exists", "effect": "NoSchedule"})],
    )
    .await;
    wait_placed(&f, &tolerating, &[&flip, &bad]).await;

    // `flip` turns unsupported (EPERM) and is tainted. NoSchedule does not evict: the pod
    // already there stays; once deleted it is not recreated there.
    restart_reader(&mut f, &flip, Uring::Fails("EPERM"));
    wait_taints(&f, &flip, 1).await;
    let (_, running, pods) = pods_of(&f, &ds).await;
    assert_eq!(
        running,
        BTreeSet::from([flip.clone()]),
        "NoSchedule evicted the pod"
    );
    let pod_api: Api<Pod> = Api::namespaced(f.client.clone(), f.ns());
    for p in pods {
        pod_api
            .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    wait_placed(&f, &ds, &[]).await;

    // Supported again: the taint goes and the pod returns.
    restart_reader(&mut f, &flip, Uring::Works);
    wait_taints(&f, &flip, 0).await;
    wait_placed(&f, &ds, &[&flip]).await;
    // The untolerating workload never reached the ENOSYS node throughout (and the watch
    // did see its pods: the one on `flip`).
    assert_eq!(ringmaster_taints(&f.node(&bad).await), 1);
    let reached = placements.stop();
    assert_eq!(
        reached,
        BTreeSet::from([flip.clone()]),
        "pods of {ds} were placed on {reached:?}; {bad} (ENOSYS, tainted) must never get one"
    );
}
