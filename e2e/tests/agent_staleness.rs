//! Reports too old to trust: an agent that stopped, and a node that booted again. The
//! real operator (under its own ServiceAccount) counts such a node as unknown, says so
//! in the StorageCluster status and takes `ringmaster.io/ready` and
//! `ringmaster.io/aio-tuned` off it; the agent, back in the new boot, ignores the
//! reader's report from the earlier boot, re-records the sysctl's original from the boot
//! value and earns the labels back.
//!
//! The reboot is simulated on a kwok node: the Node's `status.nodeInfo.bootID` is changed
//! (what the kubelet does at start), the sysctl is set to a "boot value", and the agent and
//! reader are restarted with the test-only `RINGMASTER_FAULT_BOOT_ID`.
//!
//! ```text
//! eval "$(hack/cluster.sh up)"
//! cargo build -p ringmaster-agent --bins -p ringmaster-operator
//! RINGMASTER_BIN_DIR=$PWD/target/debug flock /tmp/ringmaster-host.lock \
//!   cargo test -p ringmaster-e2e --test e2e -- agent_staleness:: --nocapture
//! ```

use crate::agent_support;
use crate::operator_support;

use std::time::{Duration, Instant};

use agent_support::*;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams};
use kube::Api;
use ringmaster_api::{
    cluster_conditions as cc, keys, node_conditions as cond, reasons, StorageCluster,
};
use ringmaster_e2e::{wait_for, KWOK_TAINT_KEY};
use serde_json::json;

/// Agent heartbeat for this test: 2 s + its 3 s resync = 5 s published, so a report is
/// stale after 3 × 5 = 15 s.
const HEARTBEAT: &str = "2";
const STALE_AFTER_S: u64 = 15;
const FAKE_BOOT: &str = "e2e00000-0000-4000-8000-000000000002";

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

fn degraded_stale(sc: &StorageCluster, needle: &str) -> anyhow::Result<()> {
    let d =
        operator_support::cond(sc, cc::DEGRADED).ok_or_else(|| anyhow::anyhow!("no Degraded"))?;
    let st = sc.status.clone().unwrap_or_default();
    anyhow::ensure!(
        d.status == "True" && d.reason == reasons::REPORTS_STALE && d.message.contains(needle),
        "Degraded {} {}: {}",
        d.status,
        d.reason,
        d.message
    );
    anyhow::ensure!(
        st.stale == 1 && st.ready == 0,
        "stale {} ready {}",
        st.stale,
        st.ready
    );
    Ok(())
}

fn all_ready(sc: &StorageCluster) -> anyhow::Result<()> {
    let r = operator_support::cond(sc, cc::READY).ok_or_else(|| anyhow::anyhow!("no Ready"))?;
    let d =
        operator_support::cond(sc, cc::DEGRADED).ok_or_else(|| anyhow::anyhow!("no Degraded"))?;
    let st = sc.status.clone().unwrap_or_default();
    anyhow::ensure!(
        r.status == "True" && d.status == "False" && st.stale == 0,
        "Ready {} {}, Degraded {} {}, stale {}",
        r.status,
        r.message,
        d.status,
        d.reason,
        st.stale
    );
    Ok(())
}

async fn wait_claims(f: &Fleet, node: &str, present: bool) {
    wait_for(
        T,
        &format!("ready/aio-tuned labels on {node} present={present}"),
        || async {
            let labels = ringmaster_labels(&f.node(node).await);
            let has = labels.get(keys::LABEL_READY).map(String::as_str) == Some("true")
                && labels.get(keys::LABEL_AIO_TUNED).map(String::as_str) == Some("true");
            let none = !labels.contains_key(keys::LABEL_READY)
                && !labels.contains_key(keys::LABEL_AIO_TUNED);
            anyhow::ensure!(if present { has } else { none }, "{labels:?}");
            // The kernel verdict and the record stay: only the claims are withdrawn.
            anyhow::ensure!(labels.contains_key(keys::LABEL_IO_URING), "{labels:?}");
            Ok(())
        },
    )
    .await
}

async fn node_event(f: &Fleet, node: &str, reason: &str) -> String {
    let api: Api<Event> = Api::namespaced(f.client.clone(), "default");
    wait_for(T, &format!("event {reason} about {node}"), || async {
        api.list(&Default::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding
                        .as_ref()
                        .is_some_and(|r| r.name.as_deref() == Some(node))
            })
            .and_then(|e| e.note)
            .ok_or_else(|| anyhow::anyhow!("no {reason} event yet"))
    })
    .await
}

#[tokio::test]
async fn stopped_agent_and_rebooted_node_count_as_unknown_and_lose_their_claims() {
    let _guard = SysctlGuard::take();
    // A low value the agent must raise, so it records an original.
    let first_boot_value = 65_536.max(read_aio_nr() + 1);
    write_aio_max_nr(first_boot_value);
    let mut f = Fleet::create("agent-stale", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let ns = f.ns().to_string();
    let id = operator_support::OperatorIdentity::create(&f.ns);
    // The fleet's data dir lies below the e2e scratch dir: the admin allows that root.
    let root = ringmaster_e2e::scratch_dir();
    let _op = operator_support::start_operator(
        &id,
        "stale-op",
        &["--allowed-data-dir-root", root.to_str().unwrap()],
    );
    let gen = f
        .create_cluster_spec(json!({
            "nodeSelector": {FLEET_LABEL: &ns},
            "tolerations": [{"key": KWOK_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "sysctl": {"aioMaxNr": 65536},
            "readService": {"dataDirs": [{"name": "d0", "hostPath": f.data_dir.path()}]},
        }))
        .await
        .metadata
        .generation
        .unwrap();
    let hb = [("RINGMASTER_HEARTBEAT_SECONDS", HEARTBEAT)];
    f.agents[0].start_reader();
    f.agents[0].start_agent_with_env(&ns, &hb);
    f.wait_applied(&node, gen).await;
    operator_support::wait_status(&f.client, &ns, CLUSTER, "Ready=True", T, all_ready).await;
    wait_claims(&f, &node, true).await;

    // The report carries this boot and a heartbeat the agent renews while nothing changes.
    let st = f.node_status(&node).await.unwrap();
    assert_eq!(st.boot_id.as_deref(), Some(boot_id().as_str()));
    assert_eq!(st.heartbeat_seconds, Some(5));
    let hb0 = st.heartbeat_time.clone().expect("heartbeatTime");
    wait_for(T, "the heartbeat renewed", || async {
        let now = f.node_status(&node).await?.heartbeat_time;
        anyhow::ensure!(now.as_ref().is_some_and(|t| t.0 > hb0.0), "{now:?}");
        Ok(())
    })
    .await;
    let addr = f.agents[0].agent_addr().await;
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ringmaster_agent_heartbeats_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let state_file = f.agents[0].host_state_dir.path().join("aio-max-nr.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["boot_id"], boot_id());
    assert_eq!(state["original"], first_boot_value);

    // 1. The agent stops (SIGKILL: a crash, an OOM kill, an image that cannot be pulled).
    f.agents[0].agent.as_mut().unwrap().kill();
    let t0 = Instant::now();
    let stale_msg = format!("no agent heartbeat for over {STALE_AFTER_S}s");
    let sc = operator_support::wait_status(
        &f.client,
        &ns,
        CLUSTER,
        "Degraded=True/ReportsStale (agent silent)",
        T,
        |sc| degraded_stale(sc, &stale_msg),
    )
    .await;
    let silent_after = t0.elapsed();
    let ready = operator_support::cond(&sc, cc::READY).unwrap();
    assert!(
        ready.status == "False"
            && ready.message.contains(&format!(
                "report too old to trust from: {node} ({stale_msg})"
            )),
        "{}",
        ready.message
    );
    wait_claims(&f, &node, false).await;
    let withdrawn_after = t0.elapsed();
    operator_support::wait_event(&ns, CLUSTER, "NodeReportStale").await;
    assert!(
        silent_after >= Duration::from_secs(STALE_AFTER_S) - Duration::from_secs(5),
        "stale after only {silent_after:?}"
    );

    // 2. The agent comes back: the claims return.
    let t1 = Instant::now();
    f.agents[0].start_agent_with_env(&ns, &hb);
    operator_support::wait_status(&f.client, &ns, CLUSTER, "Ready=True again", T, all_ready).await;
    wait_claims(&f, &node, true).await;
    let back_after = t1.elapsed();

    // 3. The node boots again: agent and reader gone with the old boot, the sysctl back to
    // the value the host boots with (an admin changed it meanwhile), the kubelet reports a
    // new boot id.
    f.agents[0].agent.take();
    f.agents[0].reader.take();
    let second_boot_value = first_boot_value + 7;
    write_aio_max_nr(second_boot_value);
    f.node_api()
        .patch_status(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"bootID": FAKE_BOOT}}})),
        )
        .await
        .expect("setting the Node's bootID");
    let t2 = Instant::now();
    operator_support::wait_status(
        &f.client,
        &ns,
        CLUSTER,
        "Degraded=True/ReportsStale (rebooted)",
        T,
        |sc| degraded_stale(sc, "rebooted since its last report"),
    )
    .await;
    wait_claims(&f, &node, false).await;
    let reboot_after = t2.elapsed();
    let boot_on_node = f
        .node(&node)
        .await
        .status
        .and_then(|s| s.node_info)
        .map(|i| i.boot_id);
    assert_eq!(
        boot_on_node.as_deref(),
        Some(FAKE_BOOT),
        "kwok kept the boot id"
    );

    // 4. The agent starts in the new boot before its reader: the reader's report from the
    // earlier boot (still in the handoff dir, answering the current generation) must not
    // count.
    let new_boot = [
        ("RINGMASTER_HEARTBEAT_SECONDS", HEARTBEAT),
        ("RINGMASTER_FAULT_BOOT_ID", FAKE_BOOT),
    ];
    assert!(f.agents[0].reader_dir().join("reader.json").is_file());
    f.agents[0].start_agent_with_env(&ns, &new_boot);
    let st = wait_for(T, "a report of the new boot", || async {
        let st = f.node_status(&node).await?;
        anyhow::ensure!(st.boot_id.as_deref() == Some(FAKE_BOOT), "{:?}", st.boot_id);
        Ok(st)
    })
    .await;
    let c = |t: &str| {
        st.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
            .unwrap()
    };
    assert_eq!(
        c(cond::IO_URING_SUPPORTED),
        ("Unknown".to_string(), "WaitingForReader".to_string()),
        "the earlier boot's reader report was trusted"
    );
    assert_eq!(c(cond::READY).0, "False");
    // The tune state now belongs to this boot, with the boot value as its original.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["boot_id"], FAKE_BOOT, "{state}");
    assert_eq!(state["original"], second_boot_value, "{state}");
    assert!(
        read_aio_max_nr() > second_boot_value,
        "raised again in the new boot"
    );

    f.agents[0].start_reader_with_env(&[("RINGMASTER_FAULT_BOOT_ID", FAKE_BOOT)]);
    operator_support::wait_status(
        &f.client,
        &ns,
        CLUSTER,
        "Ready=True after reboot",
        T,
        all_ready,
    )
    .await;
    wait_claims(&f, &node, true).await;
    let note = node_event(&f, &node, "NodeRebooted").await;
    assert!(note.contains(FAKE_BOOT), "{note}");
    println!(
        "figures: stale after agent stop {silent_after:.1?} (limit {STALE_AFTER_S}s), claims withdrawn {withdrawn_after:.1?}; \
         agent back -> Ready {back_after:.1?}; reboot (bootID changed) -> stale and withdrawn {reboot_after:.1?}"
    );
}
