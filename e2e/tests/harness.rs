//! The harness and the control plane it runs against do what the other e2e tests rely
//! on: kwok nodes turn Ready, the scheduler and DaemonSet controller place pods there and
//! kwok makes them Running, pod-bound tokens carry the node and are subject to RBAC,
//! project binaries run under a guard, and waiting fails with a useful message.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use ringmaster_e2e::{
    apiserver_url, bin_dir, client, jwt_claims, kubectl, kubectl_ok, kubectl_stdin, pod_token,
    spawn_bin, unique_name, wait_for, write_token_kubeconfig, FakeNode, TestNamespace,
    KWOK_TAINT_KEY,
};
use serde_json::json;

fn tolerate_kwok() -> serde_json::Value {
    json!([{"key": KWOK_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}])
}

async fn wait_pod_running(api: &Api<Pod>, name: &str) -> Pod {
    wait_for(
        Duration::from_secs(60),
        &format!("pod {name} Running"),
        || async {
            let p = api.get(name).await?;
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            anyhow::ensure!(phase == "Running", "phase {phase:?}");
            Ok(p)
        },
    )
    .await
}

#[tokio::test]
async fn pods_run_on_fake_nodes_and_bound_tokens_carry_the_node() {
    let c = client().await;
    assert!(
        apiserver_url().starts_with("https://127.0.0.1:"),
        "{}",
        apiserver_url()
    );
    let ns = TestNamespace::create(&c, "harness").await;
    let node = FakeNode::new(&unique_name("e2e-node"))
        .label("ringmaster.io/e2e-role", "storage")
        .create(&c)
        .await;

    kubectl_ok(["create", "serviceaccount", "agent", "-n", &ns.name]);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent-0"},
        "spec": {
            "serviceAccountName": "agent",
            "nodeSelector": {"kubernetes.io/hostname": node.name()},
            "tolerations": tolerate_kwok(),
            "containers": [{"name": "agent", "image": "example.invalid/agent:0"}],
        },
    });
    kubectl_stdin(["apply", "-n", &ns.name, "-f", "-"], &pod.to_string()).ok();
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    let p = wait_pod_running(&pods, "agent-0").await;
    assert_eq!(
        p.spec.unwrap().node_name.as_deref(),
        Some(node.name()),
        "scheduled by kube-scheduler"
    );

    let token = pod_token(&ns.name, "agent", "agent-0");
    let claims = jwt_claims(&token);
    let k8s = &claims["kubernetes.io"];
    assert_eq!(k8s["pod"]["name"], "agent-0", "{claims}");
    assert_eq!(
        k8s["node"]["name"],
        node.name(),
        "pod-bound token names the node: {claims}"
    );

    let kc = write_token_kubeconfig(&format!("{}-agent-0", ns.name), &token);
    let kc = kc.to_str().unwrap();
    let who: serde_json::Value = serde_json::from_str(&kubectl_ok([
        "auth",
        "whoami",
        "-o",
        "json",
        "--kubeconfig",
        kc,
    ]))
    .unwrap();
    let user = &who["status"]["userInfo"];
    assert_eq!(
        user["username"],
        format!("system:serviceaccount:{}:agent", ns.name),
        "{who}"
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/node-name"],
        json!([node.name()]),
        "{who}"
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["agent-0"]),
        "{who}"
    );

    // RBAC applies to the token (it is no admin): nothing is granted yet ...
    let denied = kubectl(["get", "nodes", "--kubeconfig", kc]).err();
    assert!(denied.contains("forbidden"), "{denied}");
    // ... until a role binds it.
    kubectl_ok([
        "create",
        "clusterrole",
        &format!("{}-nodes", ns.name),
        "--verb=get,list",
        "--resource=nodes",
    ]);
    kubectl_ok([
        "create",
        "clusterrolebinding",
        &format!("{}-nodes", ns.name),
        &format!("--clusterrole={}-nodes", ns.name),
        &format!("--serviceaccount={}:agent", ns.name),
    ]);
    let listed = kubectl_ok(["get", "node", node.name(), "--kubeconfig", kc, "-o", "name"]);
    assert_eq!(listed.trim(), format!("node/{}", node.name()));
    kubectl_ok([
        "delete",
        "clusterrolebinding,clusterrole",
        &format!("{}-nodes", ns.name),
    ]);

    // The token dies with its pod.
    kubectl_ok([
        "delete",
        "pod",
        "agent-0",
        "-n",
        &ns.name,
        "--grace-period=0",
        "--force",
    ]);
    wait_for(
        Duration::from_secs(30),
        "token of deleted pod rejected",
        || async {
            let out = kubectl(["auth", "whoami", "--kubeconfig", kc]);
            anyhow::ensure!(!out.success(), "still accepted");
            anyhow::ensure!(out.stderr.contains("Unauthorized"), "{}", out.stderr);
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn daemonsets_place_a_running_pod_on_each_selected_fake_node() {
    let c = client().await;
    let ns = TestNamespace::create(&c, "ds").await;
    let role = unique_name("ds");
    let n1 = FakeNode::new(&unique_name("e2e-ds"))
        .label("ringmaster.io/e2e-ds", &role)
        .create(&c)
        .await;
    let n2 = FakeNode::new(&unique_name("e2e-ds"))
        .label("ringmaster.io/e2e-ds", &role)
        .create(&c)
        .await;
    let _other = FakeNode::new(&unique_name("e2e-ds")).create(&c).await;
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "nodeSelector": {"ringmaster.io/e2e-ds": role},
                    "tolerations": tolerate_kwok(),
                    "containers": [{"name": "agent", "image": "example.invalid/agent:0"}],
                },
            },
        },
    });
    kubectl_stdin(["apply", "-n", &ns.name, "-f", "-"], &ds.to_string()).ok();
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    wait_for(
        Duration::from_secs(60),
        "DaemonSet agent: 2 pods ready",
        || async {
            let st = dss.get("agent").await?.status.unwrap_or_default();
            anyhow::ensure!(
                st.desired_number_scheduled == 2 && st.number_ready == 2,
                "desired {} ready {}",
                st.desired_number_scheduled,
                st.number_ready
            );
            Ok(())
        },
    )
    .await;
    let mut nodes: Vec<String> = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.spec.unwrap().node_name.unwrap())
        .collect();
    nodes.sort();
    let mut want = vec![n1.name.clone(), n2.name.clone()];
    want.sort();
    assert_eq!(nodes, want);
}

#[tokio::test]
async fn spawned_binaries_run_without_the_admin_kubeconfig_and_are_stopped() {
    let mut p = spawn_bin(
        "ringmaster-agent",
        &["--help"],
        &[("RINGMASTER_E2E_PROBE", "1")],
    );
    let st = p.wait_exit(Duration::from_secs(30)).expect("--help exits");
    assert!(st.success(), "{st}: {}", p.log());
    assert!(p.log().contains("Usage"), "{}", p.log());

    // A long-running process is stopped when its guard drops.
    // (A shell under a name of its own in the bin dir stands in for a long-running binary.)
    let name = unique_name("e2e-sleep");
    let sleeper = bin_dir().join(&name);
    std::os::unix::fs::symlink("/bin/sh", &sleeper).unwrap();
    let pid;
    {
        let mut p = spawn_bin(
            &name,
            &["-c", "echo KUBECONFIG=${KUBECONFIG:-unset}; exec sleep 600"],
            &[],
        );
        p.wait_for_log(Duration::from_secs(10), "KUBECONFIG=unset")
            .await;
        p.assert_running();
        pid = p.pid();
    }
    std::fs::remove_file(&sleeper).unwrap();
    // The guard reaped it, so its pid is gone.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived its guard"
    );
}

#[test]
#[should_panic(expected = "no-such-binary is missing")]
fn spawning_a_missing_binary_fails_clearly() {
    spawn_bin("no-such-binary", &[], &[]);
}

#[tokio::test]
#[should_panic(expected = "timed out after")]
async fn wait_for_reports_what_it_waited_for() {
    wait_for(Duration::from_millis(300), "the impossible", || async {
        anyhow::bail!("still impossible")
    })
    .await
}
