//! The operator as the second line behind the API server: a spec that breaks the admin's
//! settings (here a data dir while the admin allows none) is Degraded naming the field and
//! gets nothing rendered; allowed, it gets agent pods that run the admin's image, where only
//! the privileged `agent` container holds the ServiceAccount token (the API server's own
//! ServiceAccount admission decides what each container gets).

use crate::operator_support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use operator_support::*;
use ringmaster_api::{cluster_conditions as cc, reasons};
use ringmaster_e2e::{client, install_crds, TestNamespace};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const IMAGE: &str = "registry.local/ringmaster-agent@sha256:\
                     0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[tokio::test]
async fn refused_spec_is_degraded_naming_the_field_and_nothing_is_rendered() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-trust").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let (pool, names, handles) = pool_nodes(&c, "trust", 1).await;
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();

    // The admin allows no data dir root (the default).
    let mut op = start_operator(&id, "trust-op-1", &["--agent-image", IMAGE]);
    let spec =
        json!({"readService": {"dataDirs": [{"name": "d0", "hostPath": "/srv/storage/d0"}]}});
    create_cluster(&c, cluster_manifest(&n, "data", &pool, spec)).await;
    let degraded =
        wait_condition(&c, &n, "data", cc::DEGRADED, "True", reasons::SPEC_REFUSED).await;
    let msg = &degraded.message;
    assert!(
        msg.contains("spec.readService.dataDirs[0].hostPath")
            && msg.contains("allows no data dirs")
            && msg.contains("--allowed-data-dir-root"),
        "{msg}"
    );
    // Nothing rendered: no DaemonSet, no ServiceAccount, even after another resync.
    op.process
        .wait_for_log(T, "spec refused: rendering nothing")
        .await;
    let ds_api: Api<DaemonSet> = Api::namespaced(c.clone(), &n);
    let sa_api: Api<ServiceAccount> = Api::namespaced(c.clone(), &n);
    assert!(ds_api.get_opt("data-agent").await.unwrap().is_none());
    assert!(sa_api.get_opt("data-agent").await.unwrap().is_none());
    drop(op);

    // The admin allows the root: the same spec now gets its fleet, with the admin's image.
    let _op = start_operator(
        &id,
        "trust-op-2",
        &[
            "--agent-image",
            IMAGE,
            "--allowed-data-dir-root",
            "/srv/storage",
        ],
    );
    let pods = wait_agent_pods(&c, &n, "data", &nodes).await;
    wait_status(&c, &n, "data", "Degraded cleared", T, |sc| {
        let d = cond(sc, cc::DEGRADED).unwrap();
        anyhow::ensure!(
            d.reason != reasons::SPEC_REFUSED,
            "{} {}",
            d.status,
            d.reason
        );
        Ok(())
    })
    .await;
    let pod = Api::<Pod>::namespaced(c.clone(), &n)
        .get(&pods[nodes[0]])
        .await
        .unwrap();
    let spec = pod.spec.unwrap();
    for ctr in &spec.containers {
        assert_eq!(ctr.image.as_deref(), Some(IMAGE), "{}", ctr.name);
    }
    // The API server's ServiceAccount admission injects no token volume (automount is
    // off); the agent container alone mounts the projected, pod-bound token.
    let mounts = |name: &str| -> Vec<(String, String)> {
        spec.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    };
    let reader = mounts("reader");
    assert!(
        reader
            .iter()
            .all(|(v, p)| !p.starts_with("/var/run/secrets")
                && (!v.contains("token") || v == "read-token")
                && !v.starts_with("kube-api-access")),
        "the reader must hold no ServiceAccount token: {reader:?}"
    );
    // The read token (what clients must send) is the reader's, never the agent's.
    assert!(
        reader.contains(&(
            "read-token".to_string(),
            "/etc/ringmaster/read-token".to_string()
        )),
        "{reader:?}"
    );
    let agent = mounts("agent");
    assert!(
        agent.iter().all(|(v, _)| v != "read-token"),
        "the agent must not see the read token: {agent:?}"
    );
    assert!(
        agent.contains(&("agent-token".to_string(), TOKEN_DIR.to_string())),
        "{agent:?}"
    );
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .all(|v| !v.name.starts_with("kube-api-access")),
        "no automounted token volume"
    );
    drop(handles);
}
