//! Least privilege, asked of the real API server: `kubectl auth can-i --as` each allowed and
//! each forbidden verb of the operator's and the agent's ServiceAccounts as the chart binds them.

use crate::chart_support;

use chart_support::{can_i, Release};
use ringmaster_e2e::{client, install_crds, kubectl, kubectl_ok, unique_name, TestNamespace};

/// (verb, resource, scope flags)
type Ask<'a> = (&'a str, &'a str, &'a [&'a str]);

fn check(user: &str, allowed: &[Ask], forbidden: &[Ask]) {
    let mut wrong = Vec::new();
    for &(verb, res, scope) in allowed {
        if !can_i(user, verb, res, scope) {
            wrong.push(format!("may NOT {verb} {res} {scope:?} but must"));
        }
    }
    for &(verb, res, scope) in forbidden {
        if can_i(user, verb, res, scope) {
            wrong.push(format!("MAY {verb} {res} {scope:?} but must not"));
        }
    }
    assert!(wrong.is_empty(), "{user}:\n  {}", wrong.join("\n  "));
}

#[tokio::test]
async fn operator_and_agent_have_exactly_the_rights_they_need() {
    let _turn = chart_support::CHART_POLICIES.lock().await;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "rbac").await;
    let n = ns.name();
    let prefix = unique_name("rbac");
    let agent_role = format!("{prefix}-agent");
    let _release = Release::install(
        &prefix,
        n,
        &[
            "--set",
            "crds.install=false",
            "--set",
            &format!("fullnameOverride={prefix}"),
            "--set",
            &format!("agent.clusterRoleName={agent_role}"),
        ],
    );
    let all: &[&str] = &["--all-namespaces"];
    let here: &[&str] = &["-n", n];
    let elsewhere: &[&str] = &["-n", "default"];
    let cluster: &[&str] = &[];

    let operator = format!("system:serviceaccount:{n}:{prefix}-operator");
    let bind_agent = format!("clusterroles/{agent_role}");
    let op_allowed: Vec<Ask> = vec![
        ("get", "storageclusters.ringmaster.io", all),
        ("list", "storageclusters.ringmaster.io", all),
        ("watch", "storageclusters.ringmaster.io", all),
        ("patch", "storageclusters.ringmaster.io", all),
        ("update", "storageclusters.ringmaster.io/finalizers", all),
        ("patch", "storageclusters.ringmaster.io/status", all),
        ("get", "storagenodes.ringmaster.io", cluster),
        ("list", "storagenodes.ringmaster.io", cluster),
        ("watch", "storagenodes.ringmaster.io", cluster),
        ("delete", "storagenodes.ringmaster.io", cluster),
        ("list", "nodes", cluster),
        ("watch", "nodes", cluster),
        ("patch", "nodes", cluster),
        ("create", "daemonsets.apps", all),
        ("patch", "daemonsets.apps", all),
        ("watch", "daemonsets.apps", all),
        ("create", "serviceaccounts", all),
        ("patch", "serviceaccounts", all),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            cluster,
        ),
        (
            "delete",
            "clusterrolebindings.rbac.authorization.k8s.io",
            cluster,
        ),
        ("bind", &bind_agent, cluster),
        ("create", "events.events.k8s.io", all),
        ("patch", "events.events.k8s.io", all),
        ("get", "leases.coordination.k8s.io", here),
        ("create", "leases.coordination.k8s.io", here),
        ("patch", "leases.coordination.k8s.io", here),
        // The read-token Secret: created, never read; the read NetworkPolicy: applied.
        ("create", "secrets", all),
        ("create", "networkpolicies.networking.k8s.io", all),
        ("patch", "networkpolicies.networking.k8s.io", all),
    ];
    let op_forbidden: Vec<Ask> = vec![
        ("create", "storageclusters.ringmaster.io", all),
        ("delete", "storageclusters.ringmaster.io", all),
        ("create", "storagenodes.ringmaster.io", cluster),
        ("get", "secrets", all),
        ("get", "secrets", here),
        ("list", "secrets", here),
        ("list", "secrets", all),
        ("watch", "secrets", all),
        ("update", "secrets", all),
        ("patch", "secrets", all),
        ("delete", "secrets", all),
        ("deletecollection", "secrets", all),
        ("get", "networkpolicies.networking.k8s.io", all),
        ("list", "networkpolicies.networking.k8s.io", all),
        ("delete", "networkpolicies.networking.k8s.io", all),
        ("get", "configmaps", all),
        ("create", "pods", all),
        ("create", "pods/exec", all),
        ("delete", "pods", all),
        ("create", "nodes", cluster),
        ("delete", "nodes", cluster),
        ("patch", "nodes/status", cluster),
        ("create", "serviceaccounts/token", all),
        ("create", "clusterroles.rbac.authorization.k8s.io", cluster),
        (
            "escalate",
            "clusterroles.rbac.authorization.k8s.io",
            cluster,
        ),
        ("bind", "clusterroles/cluster-admin", cluster),
        ("bind", "clusterroles/system:node", cluster),
        ("create", "rolebindings.rbac.authorization.k8s.io", all),
        ("create", "deployments.apps", all),
        ("patch", "leases.coordination.k8s.io", elsewhere),
        ("get", "leases.coordination.k8s.io", all),
        ("delete", "leases.coordination.k8s.io", here),
        ("patch", "storagenodes.ringmaster.io/status", cluster),
        ("create", "events", all),
        (
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            cluster,
        ),
        (
            "create",
            "validatingadmissionpolicies.admissionregistration.k8s.io",
            cluster,
        ),
        ("impersonate", "serviceaccounts", all),
    ];
    check(&operator, &op_allowed, &op_forbidden);

    // The agent, bound to the agent ClusterRole as the operator binds it.
    kubectl_ok(["create", "serviceaccount", "stc-agent", "-n", n]);
    let binding = format!("{prefix}-agent-binding");
    kubectl_ok([
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole",
        &agent_role,
        "--serviceaccount",
        &format!("{n}:stc-agent"),
    ]);
    let agent = format!("system:serviceaccount:{n}:stc-agent");
    let ag_allowed: Vec<Ask> = vec![
        ("get", "storageclusters.ringmaster.io", all),
        ("list", "storageclusters.ringmaster.io", all),
        ("watch", "storageclusters.ringmaster.io", all),
        ("get", "storagenodes.ringmaster.io", cluster),
        ("list", "storagenodes.ringmaster.io", cluster),
        ("watch", "storagenodes.ringmaster.io", cluster),
        ("create", "storagenodes.ringmaster.io", cluster),
        ("patch", "storagenodes.ringmaster.io", cluster),
        ("update", "storagenodes.ringmaster.io", cluster),
        ("patch", "storagenodes.ringmaster.io/status", cluster),
        ("update", "storagenodes.ringmaster.io/status", cluster),
        ("get", "nodes", cluster),
        ("list", "nodes", cluster),
        ("watch", "nodes", cluster),
        ("patch", "nodes", cluster),
        ("create", "events", all),
        ("patch", "events", all),
        ("create", "events.events.k8s.io", all),
    ];
    let ag_forbidden: Vec<Ask> = vec![
        ("get", "secrets", all),
        ("list", "secrets", here),
        ("get", "configmaps", here),
        ("create", "pods/exec", all),
        ("get", "pods", all),
        ("create", "pods", all),
        ("delete", "pods", all),
        ("delete", "nodes", cluster),
        ("create", "nodes", cluster),
        ("update", "nodes/status", cluster),
        ("patch", "nodes/status", cluster),
        ("delete", "storagenodes.ringmaster.io", cluster),
        ("create", "storageclusters.ringmaster.io", all),
        ("patch", "storageclusters.ringmaster.io", all),
        ("delete", "storageclusters.ringmaster.io", all),
        ("patch", "storageclusters.ringmaster.io/status", all),
        ("update", "storageclusters.ringmaster.io/finalizers", all),
        ("delete", "events", all),
        ("create", "daemonsets.apps", all),
        ("create", "serviceaccounts/token", all),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            cluster,
        ),
        ("bind", "clusterroles/cluster-admin", cluster),
        ("update", "leases.coordination.k8s.io", all),
        ("impersonate", "users", cluster),
    ];
    let result = std::panic::catch_unwind(|| check(&agent, &ag_allowed, &ag_forbidden));
    let _ = kubectl(["delete", "clusterrolebinding", &binding]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
