//! The chart's ValidatingAdmissionPolicy on the real API server: each agent, authenticated
//! with a ServiceAccount token bound to its pod on a simulated node, may change only its own
//! Node (only `ringmaster.io/` labels and annotations and the Ringmaster taint) and only the
//! StorageNode named after it. Cross-node writes and foreign changes are refused; own writes
//! pass; identities that are not agents are not restricted.

use crate::chart_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chart_support::{Release, CHART_POLICIES};
use ringmaster_e2e::{
    client, install_crds, jwt_claims, kubectl, kubectl_ok, kubectl_stdin, pod_token, unique_name,
    write_token_kubeconfig, FakeNode, TestNamespace,
};

/// kubectl under another identity's kubeconfig (the flag wins over the admin `KUBECONFIG`).
fn as_user(kc: &Path, args: &[&str]) -> ringmaster_e2e::KubectlOutput {
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap()];
    all.extend_from_slice(args);
    kubectl(&all)
}

fn allowed(kc: &Path, what: &str, args: &[&str]) {
    let out = as_user(kc, args);
    assert!(
        out.success(),
        "{what}: `kubectl {}` was refused but must pass:\n{}",
        args.join(" "),
        out.stderr
    );
}

fn refused(kc: &Path, what: &str, args: &[&str], because: &str) {
    let out = as_user(kc, args);
    assert!(
        !out.success(),
        "{what}: `kubectl {}` passed but must be refused",
        args.join(" ")
    );
    assert!(
        out.stderr.contains("ValidatingAdmissionPolicy") && out.stderr.contains(because),
        "{what}: refused, but not by the policy for {because:?}:\n{}",
        out.stderr
    );
}

/// The StorageCluster whose agent ServiceAccount (`<CLUSTER>-agent`) the test binds.
const CLUSTER: &str = "stc";

/// A StorageNode as an agent of `ns/cluster` writes it: named after its node, labelled
/// with its cluster.
fn storage_node_of(name: &str, node_name: &str, ns: &str, cluster: &str) -> String {
    format!(
        "apiVersion: ringmaster.io/v1alpha1\nkind: StorageNode\nmetadata:\n  name: {name}\n  \
         labels:\n    ringmaster.io/cluster-namespace: {ns}\n    ringmaster.io/cluster-name: {cluster}\n\
         spec:\n  nodeName: {node_name}\n  cluster: {ns}/{cluster}\n"
    )
}

fn storage_node(name: &str, ns: &str) -> String {
    storage_node_of(name, name, ns, CLUSTER)
}

fn apply_as(kc: &Path, manifest: &str) -> ringmaster_e2e::KubectlOutput {
    kubectl_stdin(
        [
            "--kubeconfig",
            kc.to_str().unwrap(),
            "apply",
            "--server-side",
            "--field-manager=ringmaster-agent",
            "-f",
            "-",
        ],
        manifest,
    )
}

/// `apply_as` that must pass.
fn applied(kc: &Path, what: &str, manifest: &str) {
    let out = apply_as(kc, manifest);
    assert!(out.success(), "{what}: {}", out.stderr);
}

/// `apply_as` that must be refused with `because` in the error.
fn apply_refused(kc: &Path, what: &str, manifest: &str, because: &str) {
    let out = apply_as(kc, manifest);
    assert!(
        !out.success() && out.stderr.contains(because),
        "{what}: {}{}",
        out.stdout,
        out.stderr
    );
}

/// An agent pod on `node` and a kubeconfig holding a token bound to it.
fn agent_identity(ns: &str, sa: &str, node: &str) -> PathBuf {
    let pod = format!("agent-{node}");
    kubectl_stdin(
        ["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\nspec:\n  \
             nodeName: {node}\n  serviceAccountName: {sa}\n  tolerations: [{{operator: Exists}}]\n  \
             containers: [{{name: agent, image: ringmaster-agent}}]\n"
        ),
    )
    .ok();
    let token = pod_token(ns, sa, &pod);
    let claims = jwt_claims(&token);
    assert_eq!(
        claims["kubernetes.io"]["node"]["name"], node,
        "the token bound to {pod} names no node: {claims}"
    );
    write_token_kubeconfig(&unique_name(&format!("agent-{node}")), &token)
}

#[tokio::test]
async fn agent_may_change_only_its_own_node_and_storagenode() {
    let _turn = CHART_POLICIES.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "vap").await;
    let prefix = unique_name("vap");
    let agent_role = format!("{prefix}-agent");
    let _release = Release::install(
        &prefix,
        ns.name(),
        &[
            "--set",
            "crds.install=false",
            "--set",
            &format!("fullnameOverride={prefix}"),
            "--set",
            &format!("agent.clusterRoleName={agent_role}"),
        ],
    );
    let n1 = FakeNode::new(&format!("{prefix}-n1")).create(&client).await;
    let n2 = FakeNode::new(&format!("{prefix}-n2")).create(&client).await;
    let (n1, n2) = (n1.name.clone(), n2.name.clone());

    // What the operator renders per StorageCluster: a ServiceAccount bound to the agent role.
    let agent_sa = format!("{CLUSTER}-agent");
    kubectl_ok(["create", "serviceaccount", &agent_sa, "-n", ns.name()]);
    let binding = format!("{prefix}-agent-binding");
    kubectl_ok([
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole",
        &agent_role,
        "--serviceaccount",
        &format!("{}:{agent_sa}", ns.name()),
    ]);
    let _cleanup = Cleanup(vec![
        vec![
            "delete".into(),
            "clusterrolebinding".into(),
            binding.clone(),
        ],
        vec![
            "delete".into(),
            "storagenode".into(),
            n1.clone(),
            n2.clone(),
            "--ignore-not-found".into(),
        ],
    ]);
    let a1 = agent_identity(ns.name(), &agent_sa, &n1);
    let a2 = agent_identity(ns.name(), &agent_sa, &n2);

    // The policy is enforced once the API server's informer has it: wait for the first refusal.
    let start = Instant::now();
    loop {
        let out = as_user(
            &a1,
            &[
                "label",
                "node",
                &n2,
                "ringmaster.io/ready=true",
                "--overwrite",
            ],
        );
        if !out.success() && out.stderr.contains("ValidatingAdmissionPolicy") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent of {n1} could still label {n2} 30 s after the policy was installed: {}{}",
            out.stdout,
            out.stderr
        );
        // Undo the write the policy did not stop yet.
        kubectl(["label", "node", &n2, "ringmaster.io/ready-"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Own writes pass.
    allowed(
        &a1,
        "own label",
        &["label", "node", &n1, "ringmaster.io/io-uring=supported"],
    );
    allowed(
        &a1,
        "own label change",
        &[
            "label",
            "node",
            &n1,
            "ringmaster.io/io-uring=unsupported",
            "--overwrite",
        ],
    );
    allowed(
        &a1,
        "own label removal",
        &["label", "node", &n1, "ringmaster.io/io-uring-"],
    );
    allowed(
        &a1,
        "own annotation",
        &[
            "annotate",
            "node",
            &n1,
            "ringmaster.io/owned-labels=ringmaster.io/ready",
        ],
    );
    allowed(
        &a1,
        "own taint",
        &[
            "taint",
            "node",
            &n1,
            "ringmaster.io/io-uring-unsupported=ENOSYS:NoSchedule",
        ],
    );
    allowed(
        &a1,
        "own taint removal",
        &["taint", "node", &n1, "ringmaster.io/io-uring-unsupported-"],
    );
    allowed(
        &a1,
        "own taint, PreferNoSchedule",
        &[
            "taint",
            "node",
            &n1,
            "ringmaster.io/io-uring-unsupported=ENOSYS:PreferNoSchedule",
        ],
    );
    allowed(
        &a1,
        "own PreferNoSchedule taint removal",
        &["taint", "node", &n1, "ringmaster.io/io-uring-unsupported-"],
    );
    refused(
        &a1,
        "own taint key with NoExecute (evicts every pod on the node)",
        &[
            "taint",
            "node",
            &n1,
            "ringmaster.io/io-uring-unsupported=ENOSYS:NoExecute",
        ],
        "only with effect NoSchedule or PreferNoSchedule",
    );
    applied(
        &a1,
        &format!("agent of {n1} could not create StorageNode {n1}"),
        &storage_node(&n1, ns.name()),
    );
    allowed(
        &a1,
        "own StorageNode status",
        &[
            "patch",
            "storagenode",
            &n1,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"kernel":"6.1.0"}}"#,
        ],
    );
    allowed(
        &a2,
        "second node's own label",
        &[
            "label",
            "node",
            &n2,
            "ringmaster.io/ready=true",
            "--overwrite",
        ],
    );
    applied(
        &a2,
        &format!("agent of {n2} could not create StorageNode {n2}"),
        &storage_node(&n2, ns.name()),
    );

    // Cross-node writes are refused.
    let other = "may change only its own Node and StorageNode";
    refused(
        &a1,
        "label another node",
        &[
            "label",
            "node",
            &n2,
            "ringmaster.io/ready=false",
            "--overwrite",
        ],
        other,
    );
    refused(
        &a2,
        "label another node",
        &[
            "label",
            "node",
            &n1,
            "ringmaster.io/ready=false",
            "--overwrite",
        ],
        other,
    );
    refused(
        &a1,
        "taint another node",
        &[
            "taint",
            "node",
            &n2,
            "ringmaster.io/io-uring-unsupported=EPERM:NoSchedule",
        ],
        other,
    );
    apply_refused(
        &a1,
        &format!("agent of {n1} wrote StorageNode {n2}"),
        &storage_node(&n2, ns.name()),
        other,
    );
    // Its own StorageNode's name, but another node in spec.nodeName, or another cluster.
    apply_refused(
        &a1,
        &format!("agent of {n1} wrote StorageNode {n1} with spec.nodeName {n2}"),
        &storage_node_of(&n1, &n2, ns.name(), CLUSTER),
        "whose spec.nodeName is",
    );
    let own_cluster = "only StorageNodes of its own StorageCluster";
    for (what, manifest) in [
        (
            "cluster-name label",
            storage_node_of(&n1, &n1, ns.name(), "other"),
        ),
        (
            "cluster-namespace label",
            storage_node_of(&n1, &n1, "kube-system", CLUSTER),
        ),
    ] {
        apply_refused(
            &a1,
            &format!("agent of {n1} wrote its StorageNode with another cluster's {what}"),
            &manifest,
            own_cluster,
        );
    }
    // A StorageNode another cluster's agent wrote cannot be taken over.
    kubectl_ok([
        "label",
        "storagenode",
        &n1,
        "ringmaster.io/cluster-name=other",
        "--overwrite",
    ]);
    refused(
        &a1,
        "patch the status of another cluster's StorageNode on its own node",
        &[
            "patch",
            "storagenode",
            &n1,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"kernel":"x"}}"#,
        ],
        own_cluster,
    );
    refused(
        &a1,
        "relabel another cluster's StorageNode as its own",
        &[
            "patch",
            "storagenode",
            &n1,
            "--type=merge",
            "-p",
            &format!(r#"{{"metadata":{{"labels":{{"ringmaster.io/cluster-name":"{CLUSTER}"}}}}}}"#),
        ],
        own_cluster,
    );
    kubectl_ok([
        "label",
        "storagenode",
        &n1,
        &format!("ringmaster.io/cluster-name={CLUSTER}"),
        "--overwrite",
    ]);
    refused(
        &a1,
        "patch another StorageNode's status",
        &[
            "patch",
            "storagenode",
            &n2,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"kernel":"x"}}"#,
        ],
        other,
    );

    // Foreign changes on its own node are refused.
    refused(
        &a1,
        "foreign label",
        &["label", "node", &n1, "team=storage"],
        "only ringmaster.io/ labels",
    );
    refused(
        &a1,
        "remove a foreign label",
        &["label", "node", &n1, "type-"],
        "only ringmaster.io/ labels",
    );
    refused(
        &a1,
        "change a foreign label",
        &["label", "node", &n1, "type=real", "--overwrite"],
        "only ringmaster.io/ labels",
    );
    refused(
        &a1,
        "foreign annotation",
        &["annotate", "node", &n1, "example.com/x=1"],
        "only ringmaster.io/ annotations",
    );
    refused(
        &a1,
        "foreign taint",
        &["taint", "node", &n1, "dedicated=storage:NoSchedule"],
        "only the taint ringmaster.io/io-uring-unsupported",
    );
    refused(
        &a1,
        "remove kwok's taint",
        &["taint", "node", &n1, "kwok.x-k8s.io/node-"],
        "only the taint ringmaster.io/io-uring-unsupported",
    );
    refused(
        &a1,
        "cordon",
        &[
            "patch",
            "node",
            &n1,
            "-p",
            r#"{"spec":{"unschedulable":true}}"#,
        ],
        "may not change a Node's spec",
    );
    refused(
        &a1,
        "add a finalizer",
        &[
            "patch",
            "node",
            &n1,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
        ],
        "may not change a Node's spec",
    );

    // A token of the agent ServiceAccount that is not bound to a pod carries no node: refused.
    let unbound = kubectl_ok([
        "create",
        "token",
        &agent_sa,
        "-n",
        ns.name(),
        "--duration",
        "10m",
    ]);
    let unbound = write_token_kubeconfig(&unique_name("agent-unbound"), unbound.trim());
    refused(
        &unbound,
        "unbound token",
        &[
            "label",
            "node",
            &n1,
            "ringmaster.io/ready=true",
            "--overwrite",
        ],
        "bound to its pod",
    );

    // Nothing above changed what it must not have.
    let labels = kubectl_ok(["get", "node", &n1, "-o", "jsonpath={.metadata.labels}"]);
    assert!(
        !labels.contains("team") && labels.contains("\"type\":\"kwok\""),
        "{n1} labels: {labels}"
    );
    let taints = kubectl_ok(["get", "node", &n1, "-o", "jsonpath={.spec.taints}"]);
    assert!(
        taints.contains("kwok.x-k8s.io/node") && !taints.contains("dedicated"),
        "{n1} taints: {taints}"
    );
    let n2_ready = kubectl_ok([
        "get",
        "node",
        &n2,
        "-o",
        "jsonpath={.metadata.labels.ringmaster\\.io/ready}",
    ]);
    assert_eq!(
        n2_ready, "true",
        "{n2}'s own agent set ready=true; the other agent must not have changed it"
    );

    // Identities that are not agents are not confined: a ServiceAccount with its own right
    // to patch Nodes, and the admin.
    kubectl_ok(["create", "serviceaccount", "labeller", "-n", ns.name()]);
    let role = format!("{prefix}-labeller");
    kubectl_ok([
        "create",
        "clusterrole",
        &role,
        "--verb=get,patch",
        "--resource=nodes",
    ]);
    kubectl_ok([
        "create",
        "clusterrolebinding",
        &role,
        "--clusterrole",
        &role,
        "--serviceaccount",
        &format!("{}:labeller", ns.name()),
    ]);
    let _cleanup2 = Cleanup(vec![
        vec!["delete".into(), "clusterrolebinding".into(), role.clone()],
        vec!["delete".into(), "clusterrole".into(), role.clone()],
    ]);
    let token = kubectl_ok([
        "create",
        "token",
        "labeller",
        "-n",
        ns.name(),
        "--duration",
        "10m",
    ]);
    let labeller = write_token_kubeconfig(&unique_name("labeller"), token.trim());
    allowed(
        &labeller,
        "another controller labels any node",
        &["label", "node", &n2, "team=storage"],
    );
    kubectl_ok(["label", "node", &n1, "team=storage"]);
}

/// The chart's StorageCluster policy holds every writer, the admin included, to the admin's
/// settings: data dirs only strictly below `agent.allowedDataDirRoots`, no `Unconfined`
/// seccomp and no control-plane tolerations unless allowed. Each refusal names the field.
#[tokio::test]
async fn storage_clusters_are_held_to_the_admins_settings() {
    let _turn = CHART_POLICIES.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "vap-stc").await;
    let prefix = unique_name("vapstc");
    // Stored before the policy (or before the admin tightened a setting). A policy of an
    // earlier test's release may linger in the API server for a moment: retry.
    let start = Instant::now();
    loop {
        let out = kubectl_stdin(
            ["apply", "-n", ns.name(), "-f", "-"],
            "apiVersion: ringmaster.io/v1alpha1\nkind: StorageCluster\nmetadata:\n  name: before\nspec: {seccomp: {type: Unconfined}}\n",
        );
        if out.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "could not store a StorageCluster before installing the policy: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _release = Release::install(
        &prefix,
        ns.name(),
        &[
            "--set",
            "crds.install=false",
            "--set",
            &format!("fullnameOverride={prefix}"),
            "--set",
            &format!("agent.clusterRoleName={prefix}-agent"),
            "--set",
            "agent.allowedDataDirRoots={/srv/storage,/mnt/disks}",
        ],
    );
    let apply = |name: &str, spec: &str| {
        kubectl_stdin(
            ["apply", "-n", ns.name(), "-f", "-"],
            &format!(
                "apiVersion: ringmaster.io/v1alpha1\nkind: StorageCluster\nmetadata:\n  name: {name}\nspec: {spec}\n"
            ),
        )
    };
    let outside = r#"{readService: {dataDirs: [{name: ok, hostPath: /srv/storage/d0}, {name: d1, hostPath: /data/d1}]}}"#;
    // Enforced once the API server's informer has the policy (and no longer has a policy of
    // an earlier release): wait for this release's refusal.
    let start = Instant::now();
    loop {
        let out = apply("outside", outside);
        if !out.success()
            && out
                .stderr
                .contains(&format!("{prefix}-storagecluster-admin-settings"))
        {
            assert!(
                out.stderr
                    .contains("spec.readService.dataDirs[1].hostPath /data/d1")
                    && out.stderr.contains("/srv/storage, /mnt/disks"),
                "the refusal must name the field and the allowed roots: {}",
                out.stderr
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "this release's policy did not refuse a data dir outside the allowed roots within 30 s: {}{}",
            out.stdout,
            out.stderr
        );
        kubectl([
            "delete",
            "stc",
            "outside",
            "-n",
            ns.name(),
            "--ignore-not-found",
        ]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let accepted = |name: &str, spec: &str| {
        let out = apply(name, spec);
        assert!(out.success(), "{name} must be accepted: {}", out.stderr);
    };
    let refused_naming = |name: &str, spec: &str, field: &str| {
        let out = apply(name, spec);
        assert!(
            !out.success()
                && out.stderr.contains("ValidatingAdmissionPolicy")
                && out.stderr.contains(field),
            "{name} must be refused by the policy naming {field:?}: {}{}",
            out.stdout,
            out.stderr
        );
    };
    accepted(
        "inside",
        r#"{readService: {dataDirs: [{name: d0, hostPath: /srv/storage/d0}, {name: d1, hostPath: /mnt/disks/a/d1}]}}"#,
    );
    refused_naming(
        "root-itself",
        r#"{readService: {dataDirs: [{name: d0, hostPath: /srv/storage}]}}"#,
        "spec.readService.dataDirs[0].hostPath /srv/storage is not below",
    );
    refused_naming(
        "prefix-sibling",
        r#"{readService: {dataDirs: [{name: d0, hostPath: /srv/storage2/d0}]}}"#,
        "spec.readService.dataDirs[0].hostPath",
    );
    refused_naming(
        "unconfined",
        r#"{seccomp: {type: Unconfined}}"#,
        "spec.seccomp.type Unconfined is not allowed",
    );
    refused_naming(
        "control-plane",
        r#"{tolerations: [{key: dedicated, operator: Exists}, {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]}"#,
        "spec.tolerations[1] tolerates the control-plane taints",
    );
    refused_naming(
        "every-taint",
        r#"{tolerations: [{operator: Exists}]}"#,
        "spec.tolerations[0] tolerates the control-plane taints",
    );
    // Updating an accepted one into a refused one is refused too.
    refused_naming(
        "inside",
        r#"{readService: {dataDirs: [{name: d0, hostPath: /srv/storage/d0}, {name: d1, hostPath: /data2/d1}]}}"#,
        "spec.readService.dataDirs[1].hostPath /data2/d1",
    );
    // Writes that leave the spec alone (the operator's finalizer) are not checked, so a
    // StorageCluster stored before can still be finalized; its spec cannot be rewritten.
    kubectl_ok([
        "patch",
        "stc",
        "before",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    kubectl_ok([
        "patch",
        "stc",
        "before",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let out = kubectl([
        "patch",
        "stc",
        "before",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"spec":{"aio":{"workers":4}}}"#,
    ]);
    assert!(
        !out.success() && out.stderr.contains("spec.seccomp.type Unconfined"),
        "a spec write to a StorageCluster that breaks the settings must be refused: {}",
        out.stderr
    );
}

/// Runs admin kubectl commands on drop (cluster-scoped leftovers of a test).
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let out = kubectl(args);
            if !out.success() {
                eprintln!("cleanup `kubectl {}`: {}", args.join(" "), out.stderr);
            }
        }
    }
}
