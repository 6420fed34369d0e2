//! Faults survived by running node agents, on the real control plane:
//! the API server restarted and etcd restarted while an agent runs (its watches come back
//! and a later spec change still converges); an agent SIGKILLed during tune, as soon as
//! its state file appears (the file still holds the original, and a restarted agent restores
//! it exactly on delete); a Node deleted while its agent reports (StorageNode collected,
//! the agent keeps running and says why); the operator across an etcd restart (its API
//! server restart is in operator_resilience.rs).
//!
//! Needs `KUBECONFIG` and `RINGMASTER_CLUSTER_DIR` (hack/cluster.sh up), `RINGMASTER_BIN_DIR`
//! with `ringmaster-agent`, and root (every test puts fs.aio-max-nr back: SysctlGuard).

use crate::agent_support;
use crate::operator_support;

use ringmaster_api::reasons;
use std::time::Duration;

use agent_support::*;
use ringmaster_e2e::{restart_control_plane_component, wait_for};
use serde_json::json;

/// One agent converged, `component` restarted, then a spec change must still reach the
/// agent (its StorageCluster watch) and its StorageNode (its writes), without a restart.
async fn control_plane_restart_converges(component: &str) {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create("fault-cp", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let g1 = f.start_and_wait_applied("sysctl: {aioMaxNr: 65536}").await;
    let agent_pid = f.agents[0].agent.as_ref().unwrap().pid();

    let t0 = std::time::Instant::now();
    restart_control_plane_component(component);
    let back = t0.elapsed();

    // A fresh client: the old one's connections died with the server.
    f.client = ringmaster_e2e::client().await;
    let g2 = f
        .patch_cluster(json!({"aio": {"maxEvents": 256}}))
        .await
        .metadata
        .generation
        .unwrap();
    assert!(g2 > g1);
    let sn = wait_for(
        Duration::from_secs(120),
        &format!("StorageNode at generation {g2} after restarting {component}"),
        || async {
            let sn = f.storage_nodes().get(&node).await?;
            let st = sn.status.clone().unwrap_or_default();
            anyhow::ensure!(
                st.applied_generation == Some(g2),
                "appliedGeneration {:?}",
                st.applied_generation
            );
            Ok(sn)
        },
    )
    .await;
    eprintln!(
        "figures: {component} restart: API ready again after {back:?}, spec change applied {:?} after the restart began",
        t0.elapsed()
    );
    let st = sn.status.unwrap();
    assert_eq!(st.io_uring.unwrap().requested_entries, 256);
    let a = f.agents[0].agent.as_mut().unwrap();
    a.assert_running();
    assert_eq!(a.pid(), agent_pid, "the agent was restarted, not recovered");
}

#[tokio::test]
async fn apiserver_restart_agent_watch_recovers() {
    control_plane_restart_converges("kube-apiserver").await;
}

#[tokio::test]
async fn etcd_restart_agent_watch_recovers() {
    control_plane_restart_converges("etcd").await;
}

#[tokio::test]
async fn agent_killed_after_raise_keeps_original_and_restores_it() {
    let guard = SysctlGuard::take();
    let low = 70_000.max(read_aio_nr() + 1000);
    write_aio_max_nr(low);
    let mut f = Fleet::create("fault-kill", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let sc = f
        .create_cluster("sysctl: {aioMaxNr: 300000, restoreOnDelete: true}")
        .await;
    f.hold_finalizer().await;
    f.start_all();
    // SIGKILL the moment the tuner's state file appears (it is written before the sysctl):
    // the agent dies between recording the original and raising, or just after raising.
    let state_file = f.agents[0].host_state_dir.path().join("aio-max-nr.json");
    let t0 = std::time::Instant::now();
    while !state_file.exists() {
        assert!(
            t0.elapsed() < T,
            "no tune state file after {T:?}: did another process raise fs.aio-max-nr \
             (now {}) before the agent?",
            read_aio_max_nr()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    f.agents[0].agent.as_mut().unwrap().kill();
    let at_kill = read_aio_max_nr();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).expect("state file after SIGKILL"))
            .expect("state file is whole JSON after SIGKILL");
    assert_eq!(state["original"], json!(low), "{state}");
    assert!(
        at_kill == low || at_kill >= 300_000,
        "fs.aio-max-nr {at_kill}: neither the original nor the raised value"
    );
    eprintln!("figures: fs.aio-max-nr {at_kill} at SIGKILL; state file: {state}");

    // A restarted agent keeps the first original (it does not take 300000 as original).
    let ns = f.ns().to_string();
    f.agents[0].start_agent(&ns);
    let sn = f.wait_applied(&node, sc.metadata.generation.unwrap()).await;
    assert_eq!(sn.status.unwrap().aio.unwrap().original, Some(low));
    assert!(read_aio_max_nr() >= 300_000);

    f.delete_cluster().await;
    f.wait_restored(&node).await;
    assert_eq!(read_aio_max_nr(), low, "fs.aio-max-nr not restored exactly");
    f.release_finalizer().await;
    f.agents[0].agent.as_mut().unwrap().assert_running();
    drop(f);
    drop(guard);
}

#[tokio::test]
async fn node_deleted_while_agent_reports() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create("fault-node", &[Uring::Works, Uring::Works]).await;
    let (gone, kept) = (f.agents[0].node.clone(), f.agents[1].node.clone());
    let gen = f.start_and_wait_applied("sysctl: {aioMaxNr: 65536}").await;
    let addr = f.agents[0].agent_addr().await;

    f.node_api()
        .delete(&gone, &Default::default())
        .await
        .expect("deleting the node");
    let sns = f.storage_nodes();
    wait_for(
        Duration::from_secs(90),
        "StorageNode garbage-collected with its Node",
        || async {
            anyhow::ensure!(sns.get_opt(&gone).await?.is_none(), "still there");
            Ok(())
        },
    )
    .await;
    wait_for(T, "agent not ready: node not found", || async {
        let (code, body) = http_get(&addr, "/readyz");
        anyhow::ensure!(code == 503 && body.contains("not found"), "{code} {body}");
        Ok(())
    })
    .await;
    // One NodeNotFound warning event about the StorageCluster, naming the node.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(f.client.clone(), f.ns());
    wait_for(T, "NodeNotFound event", || async {
        let evs = events.list(&Default::default()).await?.items;
        let hits: Vec<_> = evs
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reasons::NODE_NOT_FOUND))
            .collect();
        anyhow::ensure!(hits.len() == 1, "{} NodeNotFound events", hits.len());
        let note = hits[0].note.clone().unwrap_or_default();
        anyhow::ensure!(note.contains(&gone), "{note}");
        Ok(())
    })
    .await;
    // Several resync passes (3 s each): still running, and it did not bring the
    // StorageNode back for a Node that is gone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    f.agents[0].agent.as_mut().unwrap().assert_running();
    assert!(sns.get_opt(&gone).await.unwrap().is_none());
    let again = events.list(&Default::default()).await.unwrap().items;
    let n = again
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reasons::NODE_NOT_FOUND))
        .count();
    assert_eq!(n, 1, "NodeNotFound announced again on every pass");
    // The other node is unaffected.
    let st = sns.get(&kept).await.unwrap().status.unwrap();
    assert_eq!(st.applied_generation, Some(gen));
    f.agents[1].agent.as_mut().unwrap().assert_running();
}

/// The operator (under its own ServiceAccount) across an etcd restart: a spec change and a
/// new agent report after it both reach the StorageCluster status.
#[tokio::test]
async fn etcd_restart_operator_watches_recover() {
    let took = operator_support::operator_watches_survive_restart("etcd", "etcd").await;
    eprintln!(
        "figures: etcd restart (operator): status converged {took:?} after the restart began"
    );
}
