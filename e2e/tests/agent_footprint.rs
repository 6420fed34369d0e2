//! The agents' API footprint, counted by the API server itself. `apiserver_request_total`
//! has no user label, so the test puts FlowSchemas in front of the agents' ServiceAccount
//! (API Priority and Fairness, on in `hack/cluster.sh`) and reads
//! `apiserver_flowcontrol_dispatched_requests_total{flow_schema}`: one schema for GETs of
//! Nodes and StorageNodes, one per watched kind, one for everything else the agents send.
//!
//! A steady agent holds exactly one watch of its StorageCluster, its Node and its
//! StorageNode, never GETs the Node or the StorageNode, and sends nothing at all while
//! its passes (every 3 s here) find nothing to change.
//!
//! ```text
//! eval "$(hack/cluster.sh up)"
//! cargo build -p ringmaster-agent --bins
//! RINGMASTER_BIN_DIR=$PWD/target/debug flock /tmp/ringmaster-host.lock \
//!   cargo test -p ringmaster-e2e --test e2e -- agent_footprint:: --nocapture
//! ```

use crate::agent_support;

use std::collections::BTreeMap;
use std::time::Duration;

use agent_support::*;
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use kube::Api;
use ringmaster_e2e::{kubectl, kubectl_ok, kubectl_stdin, wait_for};
use serde_json::json;

/// Which of the agents' requests each FlowSchema counts, in matching order.
const SCHEMAS: [(&str, &str, &str, &str); 5] = [
    // (suffix, verb, API group, resource)
    ("get", "get", "*", "*"),
    (
        "watch-clusters",
        "watch",
        "ringmaster.io",
        "storageclusters",
    ),
    ("watch-nodes", "watch", "", "nodes"),
    (
        "watch-storagenodes",
        "watch",
        "ringmaster.io",
        "storagenodes",
    ),
    ("other", "*", "*", "*"),
];

/// FlowSchemas matching one ServiceAccount, deleted on drop.
struct Schemas {
    names: Vec<String>,
}

impl Schemas {
    async fn create(client: &kube::Client, ns: &str, sa: &str) -> Schemas {
        let mut names = Vec::new();
        for (i, (suffix, verb, group, resource)) in SCHEMAS.iter().enumerate() {
            let name = format!("{ns}-{suffix}");
            let (groups, resources): (Vec<&str>, Vec<&str>) = if *suffix == "get" {
                (vec!["", "ringmaster.io"], vec!["nodes", "storagenodes"])
            } else {
                (vec![*group], vec![*resource])
            };
            let mut rule = json!({
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"namespace": ns, "name": sa}}],
                "resourceRules": [{
                    "verbs": [verb], "apiGroups": groups, "resources": resources,
                    "clusterScope": true, "namespaces": ["*"],
                }],
            });
            if *suffix == "other" {
                rule["nonResourceRules"] = json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]);
            }
            let fs = json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "FlowSchema",
                "metadata": {"name": name},
                "spec": {
                    "matchingPrecedence": 500 + i,
                    "priorityLevelConfiguration": {"name": "workload-low"},
                    "distinguisherMethod": {"type": "ByUser"},
                    "rules": [rule],
                },
            });
            kubectl_stdin(
                ["apply", "--server-side", "-f", "-"],
                &serde_json::to_string(&fs).unwrap(),
            )
            .ok();
            names.push(name);
        }
        // The API server takes a schema into use when its config controller digests it,
        // and says so on its status.
        let api: Api<FlowSchema> = Api::all(client.clone());
        for n in &names {
            wait_for(T, &format!("FlowSchema {n} in use"), || async {
                let fs = api.get(n).await?;
                let digested = fs
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_.as_deref() == Some("Dangling"));
                anyhow::ensure!(digested, "no Dangling condition yet");
                Ok(())
            })
            .await;
        }
        Schemas { names }
    }

    /// Requests each schema dispatched so far, by schema suffix.
    async fn counts(&self) -> BTreeMap<String, u64> {
        let text = kubectl_ok(["get", "--raw", "/metrics"]);
        let mut out: BTreeMap<String, u64> = SCHEMAS
            .iter()
            .map(|(suffix, ..)| (suffix.to_string(), 0))
            .collect();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_flowcontrol_dispatched_requests_total{")
            else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            for (name, (suffix, ..)) in self.names.iter().zip(SCHEMAS.iter()) {
                if labels.contains(&format!("flow_schema=\"{name}\"")) {
                    *out.get_mut(*suffix).unwrap() += value.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        out
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = kubectl(["delete", "flowschema", n, "--wait=false"]);
        }
    }
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

#[tokio::test]
async fn a_steady_agent_holds_one_watch_per_object_and_sends_nothing() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create("agent-quiet", &[Uring::Works, Uring::Fails("ENOSYS")]).await;
    let schemas = Schemas::create(&f.client, f.ns(), "ringmaster-agent").await;
    let at_start = schemas.counts().await;
    // The failing node gets the taint: the taint path works from the watched Node too.
    f.start_and_wait_applied("unsupportedNodes: Taint").await;
    let bad = f.agents[1].node.clone();
    wait_for(T, "the unsupported node tainted", || async {
        let n = f.node_api().get(&bad).await?;
        anyhow::ensure!(ringmaster_taints(&n) == 1, "taints {:?}", n.spec);
        Ok(())
    })
    .await;

    // Settled: nothing sent for 4 s (more than a pass apart).
    let mut settled = schemas.counts().await;
    let deadline = std::time::Instant::now() + T;
    loop {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let now = schemas.counts().await;
        let moved = delta(&now, &settled);
        settled = now;
        if moved.values().all(|v| *v == 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agents never stopped sending: {moved:?}"
        );
    }
    let since_start = delta(&settled, &at_start);
    println!("requests of 2 agents from start to settled: {since_start:?}");
    for kind in ["watch-clusters", "watch-nodes", "watch-storagenodes"] {
        assert_eq!(
            since_start[kind], 2,
            "one {kind} per agent (2 agents), no re-watch: {since_start:?}"
        );
    }

    // The steady window: passes run, the API server hears nothing.
    let addrs = [
        f.agents[0].agent_addr().await,
        f.agents[1].agent_addr().await,
    ];
    let passes = |a: &str| {
        sample(&http_get(a, "/metrics").1, "ringmaster_agent_passes_total").expect("passes_total")
    };
    let passes_before: Vec<u64> = addrs.iter().map(|a| passes(a)).collect();
    let before = schemas.counts().await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let window = delta(&schemas.counts().await, &before);
    for (a, p) in addrs.iter().zip(&passes_before) {
        assert!(passes(a) >= p + 3, "the agent at {a} ran no passes");
    }
    println!("requests of 2 agents in a steady 12 s window: {window:?}");
    assert!(
        window.values().all(|v| *v == 0),
        "steady agents sent requests: {window:?}"
    );
    assert_eq!(
        delta(&before, &at_start)["get"],
        0,
        "no GET of a Node or StorageNode"
    );
    drop(schemas);
    drop(f);
}
