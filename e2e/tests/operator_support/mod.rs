//! Shared steps of the operator e2e tests: the operator's own RBAC and ServiceAccount
//! token, running the operator binary, scraping its metrics, and writing StorageNode
//! reports and node labels the way an agent does (under the agent's own identity).
#![allow(dead_code)]

use ringmaster_api::reasons;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use ringmaster_api::{
    keys, node_conditions as nc, IoUringReport, StorageCluster, StorageNode, StorageNodeStatus,
};
use ringmaster_e2e::{
    kubectl, kubectl_ok, pod_token, repo_root, spawn_bin, unique_name, wait_for,
    write_token_kubeconfig, FakeNode, FakeNodeHandle, Process, TestNamespace, KWOK_TAINT_KEY,
};
use serde_json::json;

/// ServiceAccount the operator runs as in each test namespace.
pub const OPERATOR_SA: &str = "ringmaster-operator";

/// The operator's identity in one test namespace: its ServiceAccount bound to the
/// ClusterRoles from operator/rbac/ (the files the chart ships), and a kubeconfig with
/// a token for it. The ClusterRoleBinding is removed on Drop.
pub struct OperatorIdentity {
    pub namespace: String,
    pub kubeconfig: PathBuf,
    binding: String,
}

/// Applies operator/rbac/*.yaml (idempotent, server-side).
pub fn apply_rbac_files() {
    for f in ["agent-clusterrole.yaml", "operator-clusterrole.yaml"] {
        let p = repo_root().join("operator/rbac").join(f);
        kubectl_ok([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=ringmaster-e2e",
            "-f",
            p.to_str().unwrap(),
        ]);
    }
}

impl OperatorIdentity {
    pub fn create(ns: &TestNamespace) -> Self {
        apply_rbac_files();
        let n = ns.name();
        kubectl_ok(["create", "serviceaccount", OPERATOR_SA, "-n", n]);
        let binding = format!("ringmaster-operator-{n}");
        kubectl_ok([
            "create",
            "clusterrolebinding",
            &binding,
            "--clusterrole=ringmaster-operator",
            &format!("--serviceaccount={n}:{OPERATOR_SA}"),
        ]);
        kubectl_ok([
            "create",
            "rolebinding",
            "ringmaster-operator-leader-election",
            "-n",
            n,
            "--clusterrole=ringmaster-operator-leader-election",
            &format!("--serviceaccount={n}:{OPERATOR_SA}"),
        ]);
        let token = kubectl_ok(["create", "token", OPERATOR_SA, "-n", n, "--duration", "1h"]);
        let kubeconfig = write_token_kubeconfig(&format!("operator-{n}"), token.trim());
        OperatorIdentity {
            namespace: n.to_string(),
            kubeconfig,
            binding,
        }
    }
}

impl Drop for OperatorIdentity {
    fn drop(&mut self) {
        if std::env::var_os("RINGMASTER_E2E_KEEP").is_none() {
            let _ = kubectl([
                "delete",
                "clusterrolebinding",
                &self.binding,
                "--ignore-not-found",
            ]);
        }
    }
}

/// A free TCP port on 127.0.0.1.
/// Creates `count` fake nodes named `<prefix><i>-…`, all labelled with one fresh
/// `ringmaster-e2e/pool` value (what the test's StorageCluster selects).
/// Returns the pool value, the node names and the handles that delete the nodes on drop.
pub async fn pool_nodes(
    client: &Client,
    prefix: &str,
    count: usize,
) -> (String, Vec<String>, Vec<FakeNodeHandle>) {
    let pool = unique_name("pool");
    let names: Vec<String> = (1..=count)
        .map(|i| unique_name(&format!("{prefix}{i}")))
        .collect();
    let mut handles = Vec::new();
    for name in &names {
        handles.push(
            FakeNode::new(name)
                .label("ringmaster-e2e/pool", &pool)
                .create(client)
                .await,
        );
    }
    (pool, names, handles)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running operator process and the port of its /metrics.
pub struct Operator {
    pub process: Process,
    pub port: u16,
    pub identity: String,
}

/// Starts ringmaster-operator under the test's ServiceAccount token, watching only the
/// test namespace, with its Lease there.
pub fn start_operator(id: &OperatorIdentity, identity: &str, extra: &[&str]) -> Operator {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--namespace",
        &id.namespace,
        "--lease-namespace",
        &id.namespace,
        "--metrics-addr",
        &addr,
        "--identity",
        identity,
    ];
    // A short Lease so failover tests are quick (unless the test sets its own).
    if !extra.contains(&"--lease-duration") {
        args.extend_from_slice(&["--lease-duration", "6"]);
    }
    args.extend_from_slice(extra);
    // RINGMASTER_E2E_OPERATOR_LOG overrides the operator's RUST_LOG (e.g. add kube=debug).
    let log = std::env::var("RINGMASTER_E2E_OPERATOR_LOG")
        .unwrap_or_else(|_| "info,ringmaster_operator=debug".into());
    let process = spawn_bin(
        "ringmaster-operator",
        &args,
        &[
            ("KUBECONFIG", id.kubeconfig.to_str().unwrap()),
            ("RUST_LOG", &log),
        ],
    );
    Operator {
        process,
        port,
        identity: identity.to_string(),
    }
}

/// GET http://127.0.0.1:port/path → (status code, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((code, body))
}

impl Operator {
    pub fn metrics(&self) -> String {
        let (code, body) = http_get(self.port, "/metrics")
            .unwrap_or_else(|e| panic!("scraping operator metrics on :{}: {e}", self.port));
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// Sum of a counter family, over label sets that pass `keep`.
    pub fn counter(&self, family: &str, keep: impl Fn(&str) -> bool) -> u64 {
        sum_counter(&self.metrics(), family, keep)
    }

    /// API writes except the Lease renewals (leader election renews on a timer).
    pub fn writes(&self) -> u64 {
        self.counter("ringmaster_operator_api_writes_total", |l| {
            !l.contains("resource=\"leases\"")
        })
    }

    pub fn write_breakdown(&self) -> String {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("ringmaster_operator_api_writes_total"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn is_leader(&self) -> bool {
        self.metrics()
            .lines()
            .any(|l| l.trim() == "ringmaster_operator_leader 1")
    }
}

pub fn sum_counter(text: &str, family: &str, keep: impl Fn(&str) -> bool) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family))
        .filter(|l| {
            let labels = l
                .split_once('{')
                .map(|x| x.1)
                .unwrap_or("")
                .split('}')
                .next()
                .unwrap_or("");
            keep(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A StorageCluster manifest selecting `pool=<pool>` nodes and tolerating kwok's taint.
pub fn cluster_manifest(
    ns: &str,
    name: &str,
    pool: &str,
    extra_spec: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({
        "nodeSelector": {"ringmaster-e2e/pool": pool},
        "tolerations": [{"key": KWOK_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "ringmaster.io/v1alpha1",
        "kind": "StorageCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

pub async fn create_cluster(client: &Client, manifest: serde_json::Value) -> StorageCluster {
    let ns = manifest["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let sc: StorageCluster =
        serde_json::from_value(manifest).expect("manifest is a StorageCluster");
    Api::<StorageCluster>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &sc)
        .await
        .unwrap_or_else(|e| panic!("creating StorageCluster: {e}"))
}

/// Merge-patches the StorageCluster's spec (as a user would with kubectl patch).
pub async fn patch_spec(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> StorageCluster {
    Api::<StorageCluster>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .unwrap_or_else(|e| panic!("patching StorageCluster {ns}/{name}: {e}"))
}

pub fn cond<'a>(sc: &'a StorageCluster, type_: &str) -> Option<&'a Condition> {
    sc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Waits until the StorageCluster's status passes `check` (Err = not yet, with why).
pub async fn wait_status(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&StorageCluster) -> anyhow::Result<()>,
) -> StorageCluster {
    let api: Api<StorageCluster> = Api::namespaced(client.clone(), ns);
    wait_for(timeout, what, || {
        let api = api.clone();
        let check = &check;
        async move {
            let sc = api.get(name).await?;
            check(&sc).map_err(|e| {
                anyhow::anyhow!(
                    "{e}; status now: {}",
                    serde_json::to_string(&sc.status).unwrap()
                )
            })?;
            Ok(sc)
        }
    })
    .await
}

/// Waits (up to 60 s) until the StorageCluster's condition `type_` has `status` and
/// `reason`, and returns that condition (its message is what tests check next).
pub async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Condition {
    let what = format!("{type_}={status}/{reason}");
    let sc = wait_status(client, ns, name, &what, Duration::from_secs(60), |sc| {
        let c = cond(sc, type_).ok_or_else(|| anyhow::anyhow!("no {type_}"))?;
        anyhow::ensure!(
            c.status == status && c.reason == reason,
            "{} {}",
            c.status,
            c.reason
        );
        Ok(())
    })
    .await;
    cond(&sc, type_)
        .cloned()
        .expect("the condition just waited for")
}

/// The counts as a tuple: (desired, reporting, tuned, supported, unsupported, ready, upToDate).
pub fn counts(sc: &StorageCluster) -> (i32, i32, i32, i32, i32, i32, i32) {
    let s = sc.status.clone().unwrap_or_default();
    (
        s.desired,
        s.reporting,
        s.tuned,
        s.io_uring_supported,
        s.io_uring_unsupported,
        s.ready,
        s.up_to_date,
    )
}

/// Waits for the agent DaemonSet's pods to be Running on exactly `nodes`, and returns
/// node name → pod name.
pub async fn wait_agent_pods(
    client: &Client,
    ns: &str,
    cluster: &str,
    nodes: &[&str],
) -> BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let want: std::collections::BTreeSet<String> = nodes.iter().map(|s| s.to_string()).collect();
    wait_for(
        Duration::from_secs(90),
        &format!("agent pods of {ns}/{cluster} Running on exactly {want:?}"),
        || {
            let pods = pods.clone();
            let want = want.clone();
            async move {
                let lp = ListParams::default()
                    .labels(&format!("{}={cluster}", keys::LABEL_CLUSTER_NAME));
                let list = pods.list(&lp).await?;
                let mut placed = BTreeMap::new();
                for p in list.items {
                    let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                    let deleting = p.metadata.deletion_timestamp.is_some();
                    if let (Some(node), Some("Running"), false) = (node, phase.as_deref(), deleting)
                    {
                        placed.insert(node, p.metadata.name.clone().unwrap());
                    }
                }
                let got: std::collections::BTreeSet<String> = placed.keys().cloned().collect();
                anyhow::ensure!(got == want, "running on {got:?}");
                Ok(placed)
            }
        },
    )
    .await
}

pub async fn daemon_set(client: &Client, ns: &str, cluster: &str) -> DaemonSet {
    Api::<DaemonSet>::namespaced(client.clone(), ns)
        .get(&format!("{cluster}-agent"))
        .await
        .unwrap_or_else(|e| panic!("DaemonSet {ns}/{cluster}-agent: {e}"))
}

/// A client acting as the agent of `pod` (a token bound to that DaemonSet pod for the
/// cluster's agent ServiceAccount, which the operator bound to ClusterRole ringmaster-agent).
pub async fn agent_client(ns: &str, cluster: &str, pod: &str) -> Client {
    let token = pod_token(ns, &format!("{cluster}-agent"), pod);
    let path = write_token_kubeconfig(&format!("agent-{pod}"), &token);
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// What an agent reports about its node.
#[derive(Clone, Debug)]
pub struct Report {
    pub generation: i64,
    /// `None`: io_uring works; `Some((ENOSYS, 38))`: it fails with that errno.
    pub failure: Option<(&'static str, i32)>,
    pub tuned: bool,
    pub restored: bool,
}

impl Report {
    pub fn ok(generation: i64) -> Self {
        Report {
            generation,
            failure: None,
            tuned: true,
            restored: false,
        }
    }
    pub fn failing(generation: i64, reason: &'static str, errno: i32) -> Self {
        Report {
            failure: Some((reason, errno)),
            ..Self::ok(generation)
        }
    }
}

fn condition(type_: &str, ok: bool, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: format!("{type_} is {ok} (written by the e2e agent stand-in)"),
        observed_generation: None,
        last_transition_time: Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap()),
    }
}

/// Writes the StorageNode of `node` as the agent does: server-side apply with field
/// manager ringmaster-agent, labels naming the cluster, then the status.
pub async fn report(agent: &Client, ns: &str, cluster: &str, node: &str, r: &Report) {
    let api: Api<StorageNode> = Api::all(agent.clone());
    let pp = PatchParams::apply(keys::MANAGER_AGENT).force();
    let obj = json!({
        "apiVersion": "ringmaster.io/v1alpha1",
        "kind": "StorageNode",
        "metadata": {
            "name": node,
            "labels": {
                keys::LABEL_STORAGENODE_CLUSTER_NAMESPACE: ns,
                keys::LABEL_STORAGENODE_CLUSTER_NAME: cluster,
            },
        },
        "spec": {"nodeName": node, "cluster": format!("{ns}/{cluster}")},
    });
    api.patch(node, &pp, &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("agent writing StorageNode {node}: {e}"));
    let supported = r.failure.is_none();
    let mut conditions = vec![
        condition(
            nc::TUNED,
            r.tuned,
            if r.tuned {
                reasons::TUNED
            } else {
                reasons::TUNE_FAILED
            },
        ),
        condition(
            nc::IO_URING_SUPPORTED,
            supported,
            r.failure.map(|f| f.0).unwrap_or(reasons::SUPPORTED),
        ),
        condition(nc::READY, supported && r.tuned, "Probe"),
    ];
    if r.restored {
        conditions.push(condition(nc::RESTORED, true, reasons::RESTORED));
    }
    let status = StorageNodeStatus {
        kernel: Some("6.8.0-e2e".into()),
        io_uring: Some(IoUringReport {
            verdict: if supported {
                "supported"
            } else {
                "unsupported"
            }
            .into(),
            supported,
            reason: r.failure.map(|f| f.0.to_string()),
            errno: r.failure.map(|f| f.1),
            requested_entries: 512,
            ring_entries: if supported { 512 } else { 0 },
            read_verified: supported,
            ..Default::default()
        }),
        applied_generation: Some(r.generation),
        worker_mode: Some(if supported { "io_uring" } else { "pread" }.into()),
        conditions,
        ..Default::default()
    };
    let body = json!({
        "apiVersion": "ringmaster.io/v1alpha1",
        "kind": "StorageNode",
        "status": status,
    });
    api.patch_status(node, &pp, &Patch::Apply(&body))
        .await
        .unwrap_or_else(|e| panic!("agent writing StorageNode {node} status: {e}"));
}

/// Labels/annotations/taint an agent puts on its Node (as the agent: merge patch).
pub async fn agent_label_node(
    agent: &Client,
    ns: &str,
    cluster: &str,
    node: &str,
    unsupported: bool,
) {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(agent.clone());
    let mut labels = json!({
        keys::LABEL_IO_URING: if unsupported { keys::UNSUPPORTED } else { keys::SUPPORTED },
        keys::LABEL_READY: (!unsupported).to_string(),
        keys::LABEL_AIO_TUNED: "true",
    });
    let mut owned = vec![
        keys::LABEL_IO_URING,
        keys::LABEL_READY,
        keys::LABEL_AIO_TUNED,
    ];
    if unsupported {
        labels[keys::LABEL_IO_URING_REASON] = json!("ENOSYS");
        owned.push(keys::LABEL_IO_URING_REASON);
    }
    let patch = json!({
        "metadata": {
            "labels": labels,
            "annotations": {
                keys::OWNED_LABELS_ANNOTATION: owned.join(","),
                keys::CLUSTER_ANNOTATION: format!("{ns}/{cluster}"),
            },
        },
    });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("agent labelling node {node}: {e}"));
    if unsupported {
        let n = api.get(node).await.unwrap();
        let mut taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        taints.push(k8s_openapi::api::core::v1::Taint {
            key: keys::TAINT_IO_URING_UNSUPPORTED.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        api.patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await
        .unwrap_or_else(|e| panic!("agent tainting node {node}: {e}"));
    }
}

/// Events recorded on a StorageCluster (events.k8s.io/v1), as "Type Reason: note".
pub fn events_of(ns: &str, name: &str) -> Vec<String> {
    let out = kubectl_ok(["get", "events.v1.events.k8s.io", "-n", ns, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["kind"] == "StorageCluster" && e["regarding"]["name"] == name)
        .map(|e| {
            format!(
                "{} {}: {}",
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["note"].as_str().unwrap_or("")
            )
        })
        .collect()
}

pub async fn wait_event(ns: &str, name: &str, needle: &str) -> String {
    wait_for(
        Duration::from_secs(30),
        &format!("an event on StorageCluster {ns}/{name} containing {needle:?}"),
        || async {
            let ev = events_of(ns, name);
            ev.iter()
                .find(|e| e.contains(needle))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("events: {ev:#?}"))
        },
    )
    .await
}

/// The operator (under its own ServiceAccount) across a restart of control-plane
/// `component`: every watch must come back, so a spec change (StorageCluster watch) and a
/// new agent report (StorageNode watch) made after it both reach the status, and the same
/// operator process is still running. Returns how long after the restart began the status
/// converged.
pub async fn operator_watches_survive_restart(component: &str, tag: &str) -> Duration {
    use ringmaster_api::cluster_conditions as cc;
    let c = ringmaster_e2e::client().await;
    ringmaster_e2e::install_crds(&c).await;
    let ns = TestNamespace::create(&c, &format!("op-{tag}")).await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let pool = unique_name("pool");
    let name = unique_name(tag);
    let _h = FakeNode::new(&name)
        .label("ringmaster-e2e/pool", &pool)
        .create(&c)
        .await;
    let mut op = start_operator(&id, &format!("{tag}-op"), &["--lease-duration", "30"]);
    create_cluster(&c, cluster_manifest(&n, "survive", &pool, json!({}))).await;
    let pods = wait_agent_pods(&c, &n, "survive", &[&name]).await;
    let a = agent_client(&n, "survive", &pods[&name]).await;
    report(&a, &n, "survive", &name, &Report::ok(1)).await;
    wait_status(
        &c,
        &n,
        "survive",
        "reporting before the restart",
        Duration::from_secs(60),
        |sc| {
            anyhow::ensure!(counts(sc).1 == 1, "counts {:?}", counts(sc));
            Ok(())
        },
    )
    .await;

    let t0 = std::time::Instant::now();
    ringmaster_e2e::restart_control_plane_component(component);

    let c = ringmaster_e2e::client().await;
    patch_spec(&c, &n, "survive", json!({"aio": {"ioUring": "Required"}})).await;
    let a = agent_client(&n, "survive", &pods[&name]).await;
    report(&a, &n, "survive", &name, &Report::failing(2, "EPERM", 1)).await;
    wait_status(
        &c,
        &n,
        "survive",
        &format!("status after the {component} restart"),
        Duration::from_secs(90),
        |sc| {
            anyhow::ensure!(
                sc.status.as_ref().unwrap().observed_generation == Some(2),
                "generation not observed"
            );
            anyhow::ensure!(
                counts(sc).4 == 1 && counts(sc).6 == 1,
                "counts {:?}",
                counts(sc)
            );
            let d = cond(sc, cc::DEGRADED).unwrap();
            anyhow::ensure!(
                d.reason == reasons::IO_URING_UNSUPPORTED,
                "Degraded {}",
                d.reason
            );
            Ok(())
        },
    )
    .await;
    let took = t0.elapsed();
    op.process.assert_running();
    took
}
