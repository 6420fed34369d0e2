//! Who may read a cluster's data, on a real API server: the operator creates the
//! `<cluster>-read-token` Secret (and never reads Secrets: its ServiceAccount cannot) and the
//! `<cluster>-agent` NetworkPolicy; the policy follows `spec.readService.allowedClients`; a token
//! the admin rotated survives an operator restart, a deleted Secret comes back; both go away
//! with the cluster (garbage collector, owner references).

use crate::operator_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use operator_support::*;
use ringmaster_api::StorageCluster;
use ringmaster_e2e::{client, install_crds, kubectl, wait_for, TestNamespace};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn can_i(user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let out = kubectl(["auth", "can-i", verb, resource, "--as", user, "-n", ns]);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource}: {other:?} {}",
            out.stderr
        ),
    }
}

/// The read port's `from` peers of a live policy, as JSON.
fn read_peers(np: &NetworkPolicy) -> Value {
    let rules = np.spec.as_ref().unwrap().ingress.as_ref().unwrap();
    serde_json::to_value(&rules[0].from).unwrap()
}

async fn token_of(api: &Api<Secret>, name: &str) -> Vec<u8> {
    api.get(name).await.unwrap().data.unwrap()["token"]
        .0
        .clone()
}

#[tokio::test]
async fn operator_creates_the_read_token_and_network_policy_and_they_go_with_the_cluster() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "read-access").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let (pool, _names, _handles) = pool_nodes(&c, "reads", 1).await;

    // The operator's identity may create Secrets but never read, list, watch, change or
    // delete one; NetworkPolicies it may only create and apply.
    let sa = format!("system:serviceaccount:{n}:{OPERATOR_SA}");
    assert!(can_i(&sa, "create", "secrets", &n));
    for verb in ["get", "list", "watch", "update", "patch", "delete"] {
        assert!(
            !can_i(&sa, verb, "secrets", &n),
            "the operator may {verb} secrets"
        );
    }
    assert!(can_i(
        &sa,
        "create",
        "networkpolicies.networking.k8s.io",
        &n
    ));
    assert!(can_i(&sa, "patch", "networkpolicies.networking.k8s.io", &n));
    for verb in ["get", "list", "delete"] {
        assert!(
            !can_i(&sa, verb, "networkpolicies.networking.k8s.io", &n),
            "the operator may {verb} networkpolicies"
        );
    }

    let op = start_operator(
        &id,
        "reads-op-1",
        &["--resync", "3", "--read-access-recheck", "3"],
    );
    let sc = create_cluster(&c, cluster_manifest(&n, "reads", &pool, json!({}))).await;
    let uid = sc.metadata.uid.clone().unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &n);
    let policies: Api<NetworkPolicy> = Api::namespaced(c.clone(), &n);

    // The Secret: 32 random bytes as 64 hex characters, owned by the cluster.
    let secret = wait_for(T, "Secret reads-read-token", || async {
        secrets
            .get_opt("reads-read-token")
            .await?
            .ok_or_else(|| anyhow::anyhow!("not yet"))
    })
    .await;
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("StorageCluster", uid.as_str())
    );
    let token = secret.data.as_ref().unwrap()["token"].0.clone();
    assert_eq!(token.len(), 64, "{:?}", String::from_utf8_lossy(&token));
    assert!(token.iter().all(u8::is_ascii_hexdigit));

    // The NetworkPolicy: the read port from the cluster's namespace only, metrics open.
    let np = wait_for(T, "NetworkPolicy reads-agent", || async {
        policies
            .get_opt("reads-agent")
            .await?
            .ok_or_else(|| anyhow::anyhow!("not yet"))
    })
    .await;
    assert_eq!(np.metadata.owner_references.as_ref().unwrap()[0].uid, uid);
    let spec = np.spec.as_ref().unwrap();
    let selector = spec
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    assert_eq!(selector["ringmaster.io/cluster"], "reads", "{selector:?}");
    assert_eq!(read_peers(&np), json!([{"podSelector": {}}]));
    let rules = spec.ingress.as_ref().unwrap();
    assert_eq!(
        serde_json::to_value(&rules[0].ports).unwrap(),
        json!([{"port": 7480, "protocol": "TCP"}])
    );
    assert_eq!(
        serde_json::to_value(&rules[1].ports).unwrap(),
        json!([{"port": 9464, "protocol": "TCP"}])
    );
    assert!(rules[1].from.is_none());

    // The DaemonSet's reader mounts that Secret and serves with it.
    let ds = daemon_set(&c, &n, "reads").await;
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert!(pod.volumes.unwrap().iter().any(|v| v
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
        == Some("reads-read-token")));

    // allowedClients: the policy follows.
    let clients = json!([
        {"podSelector": {"matchLabels": {"app": "storage"}}},
        {"namespaceSelector": {"matchLabels": {"team": "db"}}, "podSelector": {"matchLabels": {"app": "storage"}}}
    ]);
    patch_spec(
        &c,
        &n,
        "reads",
        json!({"readService": {"allowedClients": clients}}),
    )
    .await;
    wait_for(T, "the NetworkPolicy following allowedClients", || async {
        let np = policies.get("reads-agent").await?;
        anyhow::ensure!(read_peers(&np) == clients, "{}", read_peers(&np));
        Ok(())
    })
    .await;
    // An entry with neither selector is refused by the API server, naming the field.
    let bad = Api::<StorageCluster>::namespaced(c.clone(), &n)
        .patch(
            "reads",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"readService": {"allowedClients": [{}]}}})),
        )
        .await
        .expect_err("an empty allowedClients entry");
    assert!(
        bad.to_string().contains("spec.readService.allowedClients"),
        "{bad}"
    );

    // The admin rotates the token in place (patch keeps the owner reference): a restarted
    // operator leaves it alone.
    let rotated = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    secrets
        .patch(
            "reads-read-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": rotated}})),
        )
        .await
        .unwrap();
    drop(op);
    let mut op = start_operator(
        &id,
        "reads-op-2",
        &["--resync", "3", "--read-access-recheck", "3"],
    );
    op.process
        .wait_for_log(T, "applied NetworkPolicy reads-agent")
        .await;
    assert_eq!(
        token_of(&secrets, "reads-read-token").await,
        rotated.as_bytes()
    );

    // Deleted by hand, it comes back (a new token) by the next recheck.
    secrets
        .delete("reads-read-token", &DeleteParams::default())
        .await
        .unwrap();
    let again = wait_for(T, "the Secret created again", || async {
        secrets
            .get_opt("reads-read-token")
            .await?
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| anyhow::anyhow!("not yet"))
    })
    .await;
    let new_token = again.data.unwrap()["token"].0.clone();
    assert_eq!(new_token.len(), 64);
    assert_ne!(new_token, rotated.as_bytes());

    // Deleting the cluster takes both with it.
    Api::<StorageCluster>::namespaced(c.clone(), &n)
        .delete("reads", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(90),
        "Secret and NetworkPolicy gone",
        || async {
            let s = secrets.get_opt("reads-read-token").await?;
            let p = policies.get_opt("reads-agent").await?;
            anyhow::ensure!(
                s.is_none() && p.is_none(),
                "secret {} policy {}",
                s.is_some(),
                p.is_some()
            );
            Ok(())
        },
    )
    .await;
}
