//! Rollouts and the request budget: a steady cluster costs zero API writes (counted by
//! the operator's own client, every POST/PUT/PATCH/DELETE except Lease renewals) over a
//! 30 s window that includes safety-net resyncs; a sizing change rewrites no DaemonSet;
//! a pod change (the read port) rolls the pods (the real DaemonSet controller replaces them) and
//! upToDate goes 0 → n as the new agents report. The write counts are printed.

use crate::operator_support;

use ringmaster_api::reasons;
use std::collections::BTreeMap;
use std::time::Duration;

use operator_support::*;
use ringmaster_api::{cluster_conditions as cc, keys};
use ringmaster_e2e::{client, install_crds, wait_for, TestNamespace};
use serde_json::json;

const T: Duration = Duration::from_secs(90);
/// The steady window (the issue asks for a minute; 30 s keeps CI short and still spans
/// three `--resync 10` safety-net reconciles and several kwok heartbeats).
const STEADY: Duration = Duration::from_secs(30);

fn writes_by_resource(op: &Operator) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in op.metrics().lines() {
        if let Some(rest) = l.strip_prefix("ringmaster_operator_api_writes_total{") {
            let labels = rest.split('}').next().unwrap();
            let res = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("resource=\""))
                .unwrap()
                .trim_end_matches('"');
            let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            if res != "leases" {
                *m.entry(res.to_string()).or_default() += v as u64;
            }
        }
    }
    m
}

fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

async fn converged(c: &kube::Client, ns: &str, name: &str, generation: i64) {
    wait_status(
        c,
        ns,
        name,
        &format!("converged at generation {generation}"),
        T,
        |sc| {
            let s = sc.status.as_ref().unwrap();
            anyhow::ensure!(
                s.observed_generation == Some(generation),
                "observedGeneration {:?}",
                s.observed_generation
            );
            anyhow::ensure!(
                counts(sc) == (3, 3, 3, 3, 0, 3, 3),
                "counts {:?}",
                counts(sc)
            );
            let p = cond(sc, cc::PROGRESSING).unwrap();
            anyhow::ensure!(
                p.reason == reasons::ROLLOUT_COMPLETE,
                "Progressing {} {}",
                p.reason,
                p.message
            );
            anyhow::ensure!(cond(sc, cc::READY).unwrap().status == "True", "not Ready");
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn steady_cluster_writes_nothing_and_only_pod_changes_roll_pods() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-roll").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let (pool, names, handles) = pool_nodes(&c, "roll", 3).await;
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut op = start_operator(&id, "roll-op", &["--resync", "10"]);
    create_cluster(&c, cluster_manifest(&n, "roll", &pool, json!({}))).await;
    let pods = wait_agent_pods(&c, &n, "roll", &nodes).await;
    for node in &nodes {
        let a = agent_client(&n, "roll", &pods[*node]).await;
        report(&a, &n, "roll", node, &Report::ok(1)).await;
    }
    converged(&c, &n, "roll", 1).await;
    // Let the DaemonSet/pod status settle (kwok marks pods ready a moment later).
    wait_for(
        Duration::from_secs(30),
        "DaemonSet status settled",
        || async {
            let ds = daemon_set(&c, &n, "roll").await;
            let s = ds.status.unwrap();
            anyhow::ensure!(
                s.number_available == Some(3) && s.updated_number_scheduled == Some(3),
                "{s:?}"
            );
            Ok(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Steady: zero writes over the window.
    let before = writes_by_resource(&op);
    let reconciles_before = op.counter("ringmaster_operator_reconciles_total", |_| true);
    tokio::time::sleep(STEADY).await;
    let after = writes_by_resource(&op);
    let reconciles =
        op.counter("ringmaster_operator_reconciles_total", |_| true) - reconciles_before;
    eprintln!(
        "steady {STEADY:?}: {reconciles} reconciles, writes {:?}",
        delta(&before, &after)
    );
    assert!(
        reconciles >= 2,
        "the window must include resyncs ({reconciles} reconciles)"
    );
    assert_eq!(
        delta(&before, &after),
        BTreeMap::new(),
        "a steady cluster must cost no writes; all writes:\n{}",
        op.write_breakdown()
    );

    // Sizing change: status only, no DaemonSet write, pods untouched.
    let ds_gen = daemon_set(&c, &n, "roll").await.metadata.generation;
    let before = writes_by_resource(&op);
    patch_spec(
        &c,
        &n,
        "roll",
        json!({"aio": {"maxEvents": 1024, "workers": 16}}),
    )
    .await;
    wait_status(&c, &n, "roll", "upToDate 0 at generation 2", T, |sc| {
        anyhow::ensure!(
            sc.status.as_ref().unwrap().observed_generation == Some(2),
            "not observed"
        );
        anyhow::ensure!(counts(sc).6 == 0, "upToDate {}", counts(sc).6);
        Ok(())
    })
    .await;
    for node in &nodes {
        let a = agent_client(&n, "roll", &pods[*node]).await;
        report(&a, &n, "roll", node, &Report::ok(2)).await;
    }
    converged(&c, &n, "roll", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sizing = delta(&before, &writes_by_resource(&op));
    eprintln!("sizing change (maxEvents/workers): writes {sizing:?}");
    assert_eq!(
        sizing.get("daemonsets"),
        None,
        "a sizing change must not touch the DaemonSet"
    );
    assert_eq!(daemon_set(&c, &n, "roll").await.metadata.generation, ds_gen);
    assert_eq!(
        wait_agent_pods(&c, &n, "roll", &nodes).await,
        pods,
        "no pod restarted"
    );

    // A pod change (the read port; the image is the admin's, not the spec's): the
    // DaemonSet's template hash changes and the pods roll.
    let before = writes_by_resource(&op);
    let sc = patch_spec(&c, &n, "roll", json!({"readService": {"port": 9100}})).await;
    wait_for(
        T,
        "DaemonSet rolled to the new template on all 3 nodes",
        || async {
            let ds = daemon_set(&c, &n, "roll").await;
            let t = ds
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap();
            anyhow::ensure!(
                t.annotations.as_ref().unwrap()[keys::CONFIG_HASH_ANNOTATION] == sc.spec.pod_hash(),
                "template hash not updated"
            );
            let s = ds.status.unwrap();
            anyhow::ensure!(
                s.observed_generation == ds.metadata.generation
                    && s.updated_number_scheduled == Some(3)
                    && s.number_available == Some(3),
                "{s:?}"
            );
            Ok(())
        },
    )
    .await;
    let new_pods = wait_agent_pods(&c, &n, "roll", &nodes).await;
    for node in &nodes {
        assert_ne!(new_pods[*node], pods[*node], "pod on {node} replaced");
    }
    wait_status(&c, &n, "roll", "upToDate 0 at generation 3", T, |sc| {
        anyhow::ensure!(
            sc.status.as_ref().unwrap().observed_generation == Some(3),
            "not observed"
        );
        anyhow::ensure!(counts(sc).6 == 0, "upToDate {}", counts(sc).6);
        Ok(())
    })
    .await;
    for node in &nodes {
        let a = agent_client(&n, "roll", &new_pods[*node]).await;
        report(&a, &n, "roll", node, &Report::ok(3)).await;
    }
    converged(&c, &n, "roll", 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rollout = delta(&before, &writes_by_resource(&op));
    let total: u64 = rollout.values().sum();
    eprintln!("read port change (pod rollout on 3 nodes): {total} writes {rollout:?}");
    assert_eq!(
        rollout.get("daemonsets"),
        Some(&1),
        "exactly one DaemonSet write: {rollout:?}"
    );
    assert!(
        !rollout.contains_key("serviceaccounts") && !rollout.contains_key("clusterrolebindings"),
        "{rollout:?}"
    );
    op.process.assert_running();
    drop(handles);
}
