//! The RBAC files in operator/rbac/ grant exactly what the operator and the agents use:
//! the real API server's authorizer is asked (`kubectl auth can-i --as`) about every
//! allowed verb and a list of forbidden ones.

use crate::operator_support;

use operator_support::*;
use ringmaster_e2e::{client, install_crds, kubectl, kubectl_ok, TestNamespace};

/// (verb, resource, namespace or "" for cluster scope). `resource/name` names one object,
/// `resource#sub` a subresource.
type Check<'a> = (&'a str, &'a str, &'a str);

fn can_i(user: &str, (verb, resource, ns): Check) -> bool {
    let (resource, sub) = resource.split_once('#').unwrap_or((resource, ""));
    let sub = format!("--subresource={sub}");
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    if sub.len() > "--subresource=".len() {
        args.push(&sub);
    }
    if !ns.is_empty() {
        args.extend_from_slice(&["-n", ns]);
    }
    let out = kubectl(args);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource}: {other:?} {}",
            out.stderr
        ),
    }
}

fn assert_grants(user: &str, allowed: &[Check], forbidden: &[Check]) {
    let mut wrong = Vec::new();
    for c in allowed {
        if !can_i(user, *c) {
            wrong.push(format!("should be allowed: {c:?}"));
        }
    }
    for c in forbidden {
        if can_i(user, *c) {
            wrong.push(format!("should be forbidden: {c:?}"));
        }
    }
    assert!(wrong.is_empty(), "{user}:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn operator_and_agent_roles_are_least_privilege() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-rbac").await;
    let n = ns.name().to_string();
    let _id = OperatorIdentity::create(&ns);
    let op = format!("system:serviceaccount:{n}:{OPERATOR_SA}");
    let other = "default";
    assert_grants(
        &op,
        &[
            ("watch", "storageclusters.ringmaster.io", other),
            ("patch", "storageclusters.ringmaster.io", other),
            ("patch", "storageclusters.ringmaster.io#status", other),
            ("update", "storageclusters.ringmaster.io#finalizers", other),
            ("list", "storagenodes.ringmaster.io", ""),
            ("delete", "storagenodes.ringmaster.io", ""),
            ("create", "daemonsets.apps", other),
            ("patch", "daemonsets.apps", other),
            ("create", "serviceaccounts", other),
            ("patch", "serviceaccounts", other),
            (
                "create",
                "clusterrolebindings.rbac.authorization.k8s.io",
                "",
            ),
            (
                "delete",
                "clusterrolebindings.rbac.authorization.k8s.io",
                "",
            ),
            (
                "bind",
                "clusterroles.rbac.authorization.k8s.io/ringmaster-agent",
                "",
            ),
            ("watch", "nodes", ""),
            ("patch", "nodes", ""),
            ("create", "events.events.k8s.io", other),
            ("create", "leases.coordination.k8s.io", &n),
            ("patch", "leases.coordination.k8s.io", &n),
        ],
        &[
            ("delete", "storageclusters.ringmaster.io", other),
            ("create", "storagenodes.ringmaster.io", ""),
            ("patch", "storagenodes.ringmaster.io#status", ""),
            ("delete", "daemonsets.apps", other),
            ("delete", "serviceaccounts", other),
            ("create", "serviceaccounts#token", other),
            ("get", "secrets", other),
            ("list", "secrets", ""),
            ("create", "pods", other),
            ("create", "pods#exec", other),
            ("delete", "nodes", ""),
            ("update", "nodes#status", ""),
            (
                "bind",
                "clusterroles.rbac.authorization.k8s.io/cluster-admin",
                "",
            ),
            ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
            ("create", "clusterroles.rbac.authorization.k8s.io", ""),
            ("create", "rolebindings.rbac.authorization.k8s.io", other),
            ("patch", "leases.coordination.k8s.io", other),
            (
                "create",
                "customresourcedefinitions.apiextensions.k8s.io",
                "",
            ),
        ],
    );

    // The agent role, bound the way the operator binds it.
    kubectl_ok(["create", "serviceaccount", "agent", "-n", &n]);
    let binding = format!("ringmaster-agent-rbac-test-{n}");
    kubectl_ok([
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole=ringmaster-agent",
        &format!("--serviceaccount={n}:agent"),
    ]);
    let agent = format!("system:serviceaccount:{n}:agent");
    assert_grants(
        &agent,
        &[
            ("watch", "storageclusters.ringmaster.io", other),
            ("create", "storagenodes.ringmaster.io", ""),
            ("patch", "storagenodes.ringmaster.io#status", ""),
            ("update", "storagenodes.ringmaster.io", ""),
            ("patch", "nodes", ""),
            ("watch", "nodes", ""),
            ("create", "events", other),
            ("create", "events.events.k8s.io", other),
        ],
        &[
            ("patch", "storageclusters.ringmaster.io", other),
            ("patch", "storageclusters.ringmaster.io#status", other),
            ("delete", "storagenodes.ringmaster.io", ""),
            ("delete", "nodes", ""),
            ("update", "nodes#status", ""),
            ("get", "secrets", other),
            ("create", "pods", other),
            ("create", "pods#exec", other),
            ("get", "configmaps", other),
            ("patch", "daemonsets.apps", other),
        ],
    );
    kubectl(["delete", "clusterrolebinding", &binding]);
}
