//! The chart's ValidatingAdmissionPolicy on the real API server: each agent, authenticated
//! with a ServiceAccount token bound to its pod on a simulated node, may change only its own
//! Node (only `ringmaster.io/` labels and annotations and the Ringmaster taint) and only the
//! StorageNode named after it. Cross-node writes and foreign changes are refused; own writes
//! pass; identities that are not agents are not restricted.

mod chart_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chart_support::Release;
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

fn storage_node(name: &str) -> String {
    format!(
        "apiVersion: ringmaster.io/v1alpha1\nkind: StorageNode\nmetadata:\n  name: {name}\n\
         spec:\n  nodeName: {name}\n  cluster: e2e/test\n"
    )
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
    kubectl_ok(["create", "serviceaccount", "agent", "-n", ns.name()]);
    let binding = format!("{prefix}-agent-binding");
    kubectl_ok([
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole",
        &agent_role,
        "--serviceaccount",
        &format!("{}:agent", ns.name()),
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
    let a1 = agent_identity(ns.name(), "agent", &n1);
    let a2 = agent_identity(ns.name(), "agent", &n2);

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
    let out = apply_as(&a1, &storage_node(&n1));
    assert!(
        out.success(),
        "agent of {n1} could not create StorageNode {n1}: {}",
        out.stderr
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
    let out = apply_as(&a2, &storage_node(&n2));
    assert!(
        out.success(),
        "agent of {n2} could not create StorageNode {n2}: {}",
        out.stderr
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
    let out = apply_as(&a1, &storage_node(&n2));
    assert!(
        !out.success() && out.stderr.contains(other),
        "agent of {n1} wrote StorageNode {n2}: {}{}",
        out.stdout,
        out.stderr
    );
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
        "agent",
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
