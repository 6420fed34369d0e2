//! Faults and concurrency: the operator SIGKILLed mid-reconcile and restarted converges;
//! two replicas elect one leader on the Lease (the standby writes nothing) and the
//! standby takes over when the leader dies; two StorageClusters on the same nodes: the later
//! one gets no agent there (and is Degraded/NodeConflict) until the older one is gone; an API
//! server restart does not lose the watches.

use crate::operator_support;

use ringmaster_api::reasons;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use operator_support::*;
use ringmaster_api::{cluster_conditions as cc, keys, StorageCluster};
use ringmaster_e2e::{client, install_crds, unique_name, wait_for, FakeNode, TestNamespace};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn killed_mid_reconcile_then_restarted_converges() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-kill").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let (pool, names, handles) = pool_nodes(&c, "kill", 2).await;
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();

    let mut first = start_operator(&id, "kill-op-1", &[]);
    first.process.wait_for_log(T, "became leader").await;
    create_cluster(&c, cluster_manifest(&n, "crash", &pool, json!({}))).await;
    // Kill it right after its first write of the reconcile (ServiceAccount applied,
    // DaemonSet and status possibly not yet).
    first
        .process
        .wait_for_log(T, "applied ServiceAccount")
        .await;
    first.process.kill();

    // A new replica (another identity: it must wait for the dead one's Lease to expire).
    let mut second = start_operator(&id, "kill-op-2", &[]);
    let pods = wait_agent_pods(&c, &n, "crash", &nodes).await;
    for node in &nodes {
        let a = agent_client(&n, "crash", &pods[*node]).await;
        report(&a, &n, "crash", node, &Report::ok(1)).await;
    }
    let sc = wait_status(&c, &n, "crash", "converged after the restart", T, |sc| {
        anyhow::ensure!(
            counts(sc) == (2, 2, 2, 2, 0, 2, 2),
            "counts {:?}",
            counts(sc)
        );
        anyhow::ensure!(cond(sc, cc::READY).unwrap().status == "True", "not Ready");
        Ok(())
    })
    .await;
    assert_eq!(
        sc.finalizers()
            .iter()
            .filter(|f| *f == keys::FINALIZER)
            .count(),
        1,
        "finalizer exactly once"
    );
    let dss = Api::<DaemonSet>::namespaced(c.clone(), &n)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(dss.items.len(), 1, "one DaemonSet");
    second.process.assert_running();
    assert!(second.is_leader());
    drop(handles);
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_fail_over() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-lease").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let pool = unique_name("pool");
    let name = unique_name("lease");
    let _h = FakeNode::new(&name)
        .label("ringmaster-e2e/pool", &pool)
        .create(&c)
        .await;

    let mut a = start_operator(&id, "replica-a", &[]);
    let mut b = start_operator(&id, "replica-b", &[]);
    let leases: Api<Lease> = Api::namespaced(c.clone(), &n);
    let holder = wait_for(T, "one replica holds the Lease", || async {
        let l = leases.get("ringmaster-operator").await?;
        let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        anyhow::ensure!(!h.is_empty(), "no holder");
        Ok(h)
    })
    .await;
    create_cluster(&c, cluster_manifest(&n, "ha", &pool, json!({}))).await;
    wait_agent_pods(&c, &n, "ha", &[&name]).await;
    wait_status(&c, &n, "ha", "status from the leader", T, |sc| {
        anyhow::ensure!(counts(sc).0 == 1, "counts {:?}", counts(sc));
        Ok(())
    })
    .await;
    let (leader, standby) = if holder == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        leader.is_leader(),
        "{} holds the Lease but says it does not lead",
        leader.identity
    );
    assert!(!standby.is_leader(), "two leaders");
    for r in [&*leader, &*standby] {
        assert_eq!(
            http_get(r.port, "/readyz").unwrap().0,
            200,
            "{} ready",
            r.identity
        );
        assert_eq!(
            http_get(r.port, "/healthz").unwrap().0,
            200,
            "{} healthy",
            r.identity
        );
    }
    assert!(leader.writes() > 0);
    assert_eq!(
        standby.writes(),
        0,
        "the standby wrote:\n{}",
        standby.write_breakdown()
    );

    // The leader dies without releasing the Lease: the standby takes over.
    leader.process.kill();
    let standby_id = standby.identity.clone();
    wait_for(
        Duration::from_secs(30),
        "standby acquires the Lease",
        || async {
            let l = leases.get("ringmaster-operator").await?;
            let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            anyhow::ensure!(h == standby_id, "holder {h}");
            Ok(())
        },
    )
    .await;
    patch_spec(&c, &n, "ha", json!({"aio": {"workers": 4}})).await;
    wait_status(
        &c,
        &n,
        "ha",
        "the new leader reconciles generation 2",
        T,
        |sc| {
            anyhow::ensure!(
                sc.status.as_ref().unwrap().observed_generation == Some(2),
                "not yet"
            );
            Ok(())
        },
    )
    .await;
    assert!(standby.is_leader());
    standby.process.assert_running();
}

#[tokio::test]
async fn later_cluster_gets_no_agent_on_nodes_an_older_one_serves() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-conflict").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let (pool, names, handles) = pool_nodes(&c, "cf", 2).await;
    let _op = start_operator(&id, "conflict-op", &["--cleanup-timeout", "1"]);
    create_cluster(&c, cluster_manifest(&n, "first", &pool, json!({}))).await;
    wait_status(&c, &n, "first", "first selects 2", T, |sc| {
        anyhow::ensure!(counts(sc).0 == 2, "counts {:?}", counts(sc));
        Ok(())
    })
    .await;
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_agent_pods(&c, &n, "first", &nodes).await;
    // creationTimestamp has second resolution: make "later" unambiguous.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_cluster(&c, cluster_manifest(&n, "second", &pool, json!({}))).await;
    let degraded = wait_condition(
        &c,
        &n,
        "second",
        cc::DEGRADED,
        "True",
        reasons::NODE_CONFLICT,
    )
    .await;
    let msg = &degraded.message;
    let sc = Api::<StorageCluster>::namespaced(c.clone(), &n)
        .get("second")
        .await
        .unwrap();
    assert!(
        msg.contains(&format!("older StorageCluster {n}/first")),
        "{msg}"
    );
    assert!(msg.contains(&names[0]) && msg.contains(&names[1]), "{msg}");
    assert!(msg.contains("spec.nodeSelector"), "{msg}");
    assert_eq!(
        counts(&sc).0,
        0,
        "the shared nodes are not second's to count"
    );
    // Excluded, not only warned about: second's DaemonSet stays off both nodes (the
    // DaemonSet controller's own verdict), so the two agents never share a node's state.
    let ds_api = Api::<DaemonSet>::namespaced(c.clone(), &n);
    let ds = wait_for(T, "second's DaemonSet scheduled on no node", || {
        let ds_api = ds_api.clone();
        async move {
            let ds = ds_api.get("second-agent").await?;
            let st = ds.status.clone().unwrap_or_default();
            anyhow::ensure!(
                st.observed_generation == ds.metadata.generation
                    && st.desired_number_scheduled == 0
                    && st.current_number_scheduled == 0,
                "status {st:?}"
            );
            Ok(ds)
        }
    })
    .await;
    let affinity =
        serde_json::to_string(&ds.spec.unwrap().template.spec.unwrap().affinity).unwrap();
    assert!(
        affinity.contains("NotIn") && affinity.contains(&names[0]) && affinity.contains(&names[1]),
        "{affinity}"
    );
    wait_agent_pods(&c, &n, "second", &[]).await;
    wait_event(&n, "second", reasons::NODE_CONFLICT).await;
    let first = Api::<StorageCluster>::namespaced(c.clone(), &n)
        .get("first")
        .await
        .unwrap();
    assert_eq!(
        cond(&first, cc::DEGRADED).unwrap().status,
        "False",
        "the older cluster keeps its nodes"
    );

    // The older one goes: the conflict clears without any change to "second".
    Api::<StorageCluster>::namespaced(c.clone(), &n)
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    wait_status(&c, &n, "second", "conflict cleared", T, |sc| {
        let d = cond(sc, cc::DEGRADED).unwrap();
        anyhow::ensure!(d.status == "False", "{} {}", d.status, d.reason);
        anyhow::ensure!(counts(sc).0 == 2, "counts {:?}", counts(sc));
        Ok(())
    })
    .await;
    // Now the nodes are second's: its agents land there.
    wait_agent_pods(&c, &n, "second", &nodes).await;
    drop(handles);
}

#[tokio::test]
async fn apiserver_restart_watches_recover() {
    operator_watches_survive_restart("kube-apiserver", "apisrv").await;
}
