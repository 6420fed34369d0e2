//! The chart on the real control plane: its rendered objects pass the API server's own
//! validation (server-side dry run), and install, upgrade (a changed value, a changed CRD
//! schema) and uninstall leave the cluster as expected: CRDs kept, nothing left behind.
//! (No kubelet runs, so the operator pods never start: the tests check objects.)

use crate::chart_support;

use chart_support::{chart_dir, helm, render, str_of, Release};
use std::time::Duration;

use ringmaster_e2e::{
    client, install_crds, kubectl, kubectl_ok, kubectl_stdin, spawn_bin, unique_name,
    wait_for_sync, write_token_kubeconfig, TestNamespace,
};

/// `helm template` with every optional object on, then `kubectl apply --dry-run=server`: the
/// API server validates each object (schemas, CEL of the admission policy, the CRDs, the
/// StorageCluster against its CRD) without persisting anything.
#[tokio::test]
async fn helm_template_passes_server_side_dry_run() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "dryrun").await;
    let docs = render(
        "ringmaster",
        ns.name(),
        &[
            "storageCluster.create=true",
            "storageCluster.spec.aio.workers=32",
        ],
    );
    let kinds: Vec<String> = docs.iter().map(|d| str_of(&d["kind"])).collect();
    for want in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "RoleBinding",
        "Service",
        "Deployment",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "StorageCluster",
    ] {
        assert!(
            kinds.iter().any(|k| k == want),
            "helm template rendered no {want}: {kinds:?}"
        );
    }
    let manifest: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    let out = kubectl_stdin(
        [
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "--field-manager=chart-dry-run",
            "-f",
            "-",
        ],
        &manifest,
    )
    .ok();
    let accepted = out
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(
        accepted,
        docs.len(),
        "the API server accepted {accepted} of {} objects:\n{out}",
        docs.len()
    );
    // Nothing was persisted.
    let out = kubectl(["get", "deployment", "ringmaster-operator", "-n", ns.name()]);
    assert!(!out.success(), "a dry run created the Deployment");

    // The dry run is a real check: a value only the API server can judge is refused.
    let bad = render(
        "ringmaster",
        ns.name(),
        &["operator.resources.requests.cpu=lots"],
    );
    let manifest: String = bad
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    let err = kubectl_stdin(["apply", "--dry-run=server", "-f", "-"], &manifest).err();
    assert!(
        err.contains("quantities must match"),
        "bad cpu quantity not refused as such: {err}"
    );
}

fn labelled(kinds: &str, release: &str, ns: Option<&str>) -> String {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut args = vec!["get", kinds, "-l", selector.as_str(), "-o", "name"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    kubectl_ok(&args)
}

const NAMESPACED: &str = "deployments,serviceaccounts,services,roles,rolebindings,storageclusters";
const CLUSTER_SCOPED: &str = "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings";

/// Install (taking over CRDs that were applied with kubectl, as a user migrating would),
/// upgrade with a changed value and with a changed CRD schema, uninstall.
#[tokio::test]
async fn helm_install_upgrade_uninstall_leave_the_cluster_as_expected() {
    let _turn = chart_support::CHART_POLICIES.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "helm").await;
    let n = ns.name();
    let rel = unique_name("rm");
    let full = format!("{rel}-ringmaster");
    // The default agent ClusterRole name: the operator binds exactly `ringmaster-agent`.
    // --take-ownership adopts it (and the CRDs) if other tests applied them with kubectl.
    let agent_role = "ringmaster-agent".to_string();
    let mut release = Release::install(
        &rel,
        n,
        &[
            "--take-ownership",
            "--set",
            "storageCluster.create=true",
            "--set",
            "storageCluster.spec.aio.workers=32",
        ],
    );

    // Installed: every object, with the values asked for.
    let ops = format!("{full}-operator");
    let replicas = kubectl_ok([
        "get",
        "deploy",
        &ops,
        "-n",
        n,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "2");
    kubectl_ok(["get", "serviceaccount", &ops, "-n", n]);
    kubectl_ok(["get", "service", &format!("{ops}-metrics"), "-n", n]);
    let election = format!("{ops}-leader-election");
    kubectl_ok(["get", "rolebinding", &election, "-n", n]);
    kubectl_ok(["get", "clusterrole", &ops, &agent_role, &election]);
    kubectl_ok(["get", "clusterrolebinding", &ops]);
    // The API server type-checked every CEL expression of both policies without a warning.
    for vap in [
        format!("{full}-agent-node-scope"),
        format!("{full}-storagecluster-admin-settings"),
    ] {
        kubectl_ok(["get", "validatingadmissionpolicybinding", &vap]);
        let mut checked = String::new();
        for _ in 0..60 {
            checked = kubectl_ok([
                "get",
                "validatingadmissionpolicy",
                &vap,
                "-o",
                "jsonpath={.status}",
            ]);
            if checked.contains("typeChecking") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert!(
            checked.contains("\"typeChecking\":{}")
                || checked.contains("\"typeChecking\":{\"expressionWarnings\":[]}"),
            "the admission policy {vap} has type-check warnings: {checked}"
        );
    }
    // The default StorageCluster came from the post-install hook, with defaults from the server.
    let stc = kubectl_ok(["get", "storagecluster", "default", "-n", n, "-o", "json"]);
    let stc: serde_json::Value = serde_json::from_str(&stc).unwrap();
    assert_eq!(stc["spec"]["aio"]["workers"], 32);
    assert_eq!(
        stc["spec"]["aio"]["maxEvents"], 512,
        "server-side default missing: {stc}"
    );
    assert!(
        stc["spec"]["agent"].get("image").is_none(),
        "a StorageCluster names no agent image: {stc}"
    );
    let stc_uid = stc["metadata"]["uid"].clone();
    // The CRDs now belong to the release and are kept on uninstall.
    for crd in ringmaster_e2e::CRD_NAMES {
        let ann = kubectl_ok(["get", "crd", crd, "-o", "jsonpath={.metadata.annotations}"]);
        assert!(
            ann.contains("\"helm.sh/resource-policy\":\"keep\""),
            "{crd}: {ann}"
        );
        assert!(
            ann.contains(&format!("\"meta.helm.sh/release-name\":\"{rel}\"")),
            "{crd}: {ann}"
        );
    }

    // The operator, as a local process under the release's ServiceAccount (no kubelet here),
    // reconciles the default StorageCluster: finalizer, agent DaemonSet, agent binding.
    let token = kubectl_ok(["create", "token", &ops, "-n", n, "--duration", "1h"]);
    let kc = write_token_kubeconfig(&unique_name("chart-operator"), token.trim());
    let mut operator = spawn_bin(
        "ringmaster-operator",
        &[
            "--namespace",
            n,
            "--lease-namespace",
            n,
            "--lease-name",
            &ops,
            "--metrics-addr",
            "127.0.0.1:0",
            "--cleanup-timeout",
            "5",
        ],
        &[("KUBECONFIG", kc.to_str().unwrap())],
    );
    let agent_binding = format!("ringmaster-agent-{n}-default");
    wait_for_sync(
        Duration::from_secs(60),
        "the operator to reconcile the default StorageCluster",
        || {
            operator.assert_running();
            let fin = kubectl_ok([
                "get",
                "storagecluster",
                "default",
                "-n",
                n,
                "-o",
                "jsonpath={.metadata.finalizers}",
            ]);
            anyhow::ensure!(
                fin.contains("ringmaster.io/cleanup"),
                "no finalizer yet: {fin:?}"
            );
            let ds = kubectl(["get", "daemonset", "default-agent", "-n", n]);
            anyhow::ensure!(ds.success(), "no DaemonSet yet: {}", ds.stderr);
            let crb = kubectl([
                "get",
                "clusterrolebinding",
                &agent_binding,
                "-o",
                "jsonpath={.roleRef.name}",
            ]);
            anyhow::ensure!(
                crb.success() && crb.stdout == agent_role,
                "no agent binding yet: {}",
                crb.stderr
            );
            Ok(())
        },
    );

    // Upgrade with changed values: the Deployment follows, the StorageCluster is untouched.
    release.upgrade(
        &chart_dir(),
        &[
            "--reuse-values",
            "--set",
            "operator.replicas=1",
            "--set",
            "operator.logFormat=text",
        ],
    );
    let dep = kubectl_ok(["get", "deploy", &ops, "-n", n, "-o", "json"]);
    let dep: serde_json::Value = serde_json::from_str(&dep).unwrap();
    assert_eq!(dep["spec"]["replicas"], 1);
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--log-format=text"),
        "upgrade did not reach the args: {args}"
    );
    let stc = kubectl_ok([
        "get",
        "storagecluster",
        "default",
        "-n",
        n,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert_eq!(
        serde_json::Value::String(stc),
        stc_uid,
        "the upgrade replaced the StorageCluster"
    );

    // Upgrade with a changed CRD schema (a chart whose CRD gained a short name): it reaches
    // the cluster, which a crds/ directory would never do.
    let changed = std::env::temp_dir().join(unique_name("chart"));
    copy_dir(std::path::Path::new(&chart_dir()), &changed);
    let crd_file = changed.join("files/crds/ringmaster.io.yaml");
    let text = std::fs::read_to_string(&crd_file).unwrap();
    assert!(
        text.contains("    shortNames:\n    - stc\n"),
        "CRD layout changed; fix this test"
    );
    std::fs::write(
        &crd_file,
        text.replace(
            "    shortNames:\n    - stc\n",
            "    shortNames:\n    - stc\n    - rmstc\n",
        ),
    )
    .unwrap();
    release.upgrade(changed.to_str().unwrap(), &["--reuse-values"]);
    let short = kubectl_ok([
        "get",
        "crd",
        "storageclusters.ringmaster.io",
        "-o",
        "jsonpath={.spec.names.shortNames}",
    ]);
    assert!(
        short.contains("rmstc"),
        "the CRD change did not reach the cluster: {short}"
    );
    kubectl_ok(["get", "rmstc", "-n", n]);
    release.upgrade(&chart_dir(), &["--reuse-values"]);
    let short = kubectl_ok([
        "get",
        "crd",
        "storageclusters.ringmaster.io",
        "-o",
        "jsonpath={.spec.names.shortNames}",
    ]);
    assert!(
        !short.contains("rmstc"),
        "upgrading back did not restore the CRD: {short}"
    );
    let _ = std::fs::remove_dir_all(&changed);

    // As NOTES.txt says: delete the StorageClusters first (the operator releases its
    // finalizer after cleaning up), then uninstall.
    kubectl_ok([
        "delete",
        "storagecluster",
        "default",
        "-n",
        n,
        "--wait",
        "--timeout=90s",
    ]);
    wait_for_sync(
        Duration::from_secs(60),
        "the StorageCluster's objects to go",
        || {
            let left = kubectl_ok(["get", "daemonsets,serviceaccounts", "-n", n, "-o", "name"]);
            anyhow::ensure!(!left.contains("default-agent"), "left: {left}");
            let crb = kubectl(["get", "clusterrolebinding", &agent_binding]);
            anyhow::ensure!(!crb.success(), "binding {agent_binding} left");
            Ok(())
        },
    );
    operator.assert_running();
    operator.stop();
    let out = release.uninstall();
    assert!(out.contains("uninstalled"), "{out}");
    assert!(
        out.contains("kept due to the resource policy"),
        "Helm did not keep the CRDs: {out}"
    );

    // CRDs kept (and still served), nothing of the release left anywhere.
    for crd in ringmaster_e2e::CRD_NAMES {
        kubectl_ok(["get", "crd", crd]);
    }
    kubectl_ok(["get", "storageclusters", "-A"]);
    assert_eq!(
        labelled(NAMESPACED, &rel, Some(n)),
        "",
        "release objects left in {n}"
    );
    assert_eq!(
        labelled(CLUSTER_SCOPED, &rel, None),
        "",
        "cluster-scoped release objects left"
    );
    let leftovers = kubectl_ok(["get", "clusterrole,clusterrolebinding", "-o", "name"]);
    assert!(
        !leftovers.contains(&rel),
        "RBAC of the release left: {leftovers}"
    );
    let secrets = kubectl_ok([
        "get",
        "secrets",
        "-n",
        n,
        "-l",
        &format!("name={rel},owner=helm"),
        "-o",
        "name",
    ]);
    assert_eq!(secrets, "", "Helm's release records left");
    let list = helm(["list", "-n", n, "-q"]).ok();
    assert!(!list.contains(&rel), "helm still lists {rel}: {list}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}
