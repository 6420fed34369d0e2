//! The operator on the real control plane, as its own ServiceAccount: a StorageCluster
//! becomes an agent DaemonSet that the real controller-manager and scheduler place only
//! on the selected kwok nodes; agent reports (written under the agents' pod-bound tokens,
//! through the RBAC the operator bound) become counts, unsupportedNodes, conditions and
//! events; `Required` vs `Preferred` flips Degraded; a sizing change reaches status as
//! upToDate 0 → n without touching the DaemonSet.

use crate::operator_support;

use ringmaster_api::reasons;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Patch, PatchParams};
use kube::Api;
use operator_support::*;
use ringmaster_api::{cluster_conditions as cc, keys};
use ringmaster_e2e::{client, install_crds, unique_name, FakeNode, TestNamespace};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn operator_places_agents_aggregates_reports_and_flips_degraded() {
    let c = client().await;
    install_crds(&c).await;
    let ns = TestNamespace::create(&c, "op-fleet").await;
    let n = ns.name().to_string();
    let id = OperatorIdentity::create(&ns);
    let pool = unique_name("pool");

    // Three nodes in the pool, one outside it.
    let names: Vec<String> = (1..=4).map(|i| unique_name(&format!("fleet{i}"))).collect();
    let mut handles = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut node = FakeNode::new(name);
        if i < 3 {
            node = node.label("ringmaster-e2e/pool", &pool);
        }
        handles.push(node.create(&c).await);
    }
    let selected: Vec<&str> = names[..3].iter().map(String::as_str).collect();

    let mut op = start_operator(&id, "fleet-op", &[]);
    let sc = create_cluster(&c, cluster_manifest(&n, "fast", &pool, json!({}))).await;
    assert_eq!(sc.metadata.generation, Some(1));

    // Pods only on the selected nodes, placed by the real scheduler.
    let pods = wait_agent_pods(&c, &n, "fast", &selected).await;
    op.process.assert_running();
    let ds = daemon_set(&c, &n, "fast").await;
    let dss = ds.status.clone().unwrap();
    assert_eq!(dss.desired_number_scheduled, 3);
    let template = ds.spec.as_ref().unwrap().template.clone();
    assert_eq!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[keys::CONFIG_HASH_ANNOTATION],
        sc.spec.pod_hash()
    );
    let pod_spec = template.spec.unwrap();
    assert_eq!(pod_spec.service_account_name.as_deref(), Some("fast-agent"));
    let agent = pod_spec
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .unwrap();
    // Root for the host files it writes, nothing more (proven enough on a real node).
    let agent_sc = agent.security_context.as_ref().unwrap();
    assert_eq!(
        (
            agent_sc.run_as_user,
            agent_sc.privileged,
            agent_sc.capabilities.as_ref().and_then(|c| c.drop.clone())
        ),
        (Some(0), Some(false), Some(vec!["ALL".to_string()]))
    );
    let reader = pod_spec
        .containers
        .iter()
        .find(|c| c.name == "reader")
        .unwrap();
    let rsc = reader.security_context.as_ref().unwrap();
    assert_eq!(rsc.run_as_non_root, Some(true));
    assert_eq!(
        rsc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    // Its ServiceAccount and RBAC binding.
    let sa = Api::<ServiceAccount>::namespaced(c.clone(), &n)
        .get("fast-agent")
        .await
        .unwrap();
    assert_eq!(
        sa.metadata.owner_references.unwrap()[0].kind,
        "StorageCluster"
    );
    let crb = Api::<ClusterRoleBinding>::all(c.clone())
        .get(&format!("ringmaster-agent-{n}-fast"))
        .await
        .unwrap();
    assert_eq!(crb.role_ref.name, "ringmaster-agent");

    // Status before any report: desired 3, nobody reporting, waiting for reports.
    wait_status(&c, &n, "fast", "desired=3, waiting for reports", T, |sc| {
        anyhow::ensure!(
            counts(sc) == (3, 0, 0, 0, 0, 0, 0),
            "counts {:?}",
            counts(sc)
        );
        let p = cond(sc, cc::PROGRESSING).ok_or_else(|| anyhow::anyhow!("no Progressing"))?;
        anyhow::ensure!(
            p.reason == reasons::WAITING_FOR_REPORTS,
            "Progressing {}",
            p.reason
        );
        anyhow::ensure!(
            sc.status.as_ref().unwrap().observed_generation == Some(1),
            "observedGeneration"
        );
        Ok(())
    })
    .await;

    // Agents report under their own pod-bound tokens: two supported, one ENOSYS.
    let mut agents = Vec::new();
    for node in &selected {
        agents.push(agent_client(&n, "fast", &pods[*node]).await);
    }
    report(&agents[0], &n, "fast", selected[0], &Report::ok(1)).await;
    report(&agents[1], &n, "fast", selected[1], &Report::ok(1)).await;
    report(
        &agents[2],
        &n,
        "fast",
        selected[2],
        &Report::failing(1, "ENOSYS", 38),
    )
    .await;
    // An agent cannot write another cluster's... (RBAC is per verb, not per object; the
    // chart's ValidatingAdmissionPolicy narrows it) - but it cannot delete StorageNodes at all.
    let del = Api::<ringmaster_api::StorageNode>::all(agents[0].clone())
        .delete(selected[1], &Default::default())
        .await;
    assert!(
        matches!(&del, Err(kube::Error::Api(e)) if e.code == 403),
        "agent must not delete StorageNodes: {del:?}"
    );

    let sc = wait_status(&c, &n, "fast", "3 reporting, 1 unsupported", T, |sc| {
        anyhow::ensure!(
            counts(sc) == (3, 3, 3, 2, 1, 2, 3),
            "counts {:?}",
            counts(sc)
        );
        Ok(())
    })
    .await;
    let st = sc.status.clone().unwrap();
    assert_eq!(st.unsupported_nodes.len(), 1);
    let u = &st.unsupported_nodes[0];
    assert_eq!(
        (
            u.name.as_str(),
            u.reason.as_deref(),
            u.errno,
            u.kernel.as_deref()
        ),
        (selected[2], Some("ENOSYS"), Some(38), Some("6.8.0-e2e"))
    );
    assert_eq!(
        st.config_hash.as_deref(),
        Some(sc.spec.config_hash().as_str())
    );
    let ready = cond(&sc, cc::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::NODES_NOT_READY)
    );
    assert!(
        ready
            .message
            .contains(&format!("{} (io_uring ENOSYS)", selected[2])),
        "{}",
        ready.message
    );
    let degraded = cond(&sc, cc::DEGRADED).unwrap();
    assert_eq!(
        degraded.status, "False",
        "Preferred: pread fallback is not degraded: {}",
        degraded.message
    );
    let progressing = cond(&sc, cc::PROGRESSING).unwrap();
    assert_eq!(progressing.reason, reasons::ROLLOUT_COMPLETE);
    let ev = wait_event(
        &n,
        "fast",
        &format!(
            "node {}: io_uring unsupported (ENOSYS, errno 38)",
            selected[2]
        ),
    )
    .await;
    assert!(ev.starts_with("Warning IoUringUnsupported"), "{ev}");
    wait_event(&n, "fast", reasons::ROLLOUT_COMPLETE).await;

    // Required: the same fleet is Degraded, with the node and the fix in the message.
    let ds_gen = daemon_set(&c, &n, "fast").await.metadata.generation;
    let sc = patch_spec(&c, &n, "fast", json!({"aio": {"ioUring": "Required"}})).await;
    assert_eq!(sc.metadata.generation, Some(2));
    let sc = wait_status(
        &c,
        &n,
        "fast",
        "Degraded IoUringUnsupported under Required",
        T,
        |sc| {
            let d = cond(sc, cc::DEGRADED).ok_or_else(|| anyhow::anyhow!("no Degraded"))?;
            anyhow::ensure!(
                d.status == "True" && d.reason == reasons::IO_URING_UNSUPPORTED,
                "Degraded {} {}",
                d.status,
                d.reason
            );
            anyhow::ensure!(
                sc.status.as_ref().unwrap().observed_generation == Some(2),
                "observedGeneration"
            );
            Ok(())
        },
    )
    .await;
    let d = cond(&sc, cc::DEGRADED).unwrap();
    assert!(
        d.message.contains(&format!("{} (ENOSYS)", selected[2])),
        "{}",
        d.message
    );
    assert!(d.message.contains("spec.aio.ioUring"), "{}", d.message);
    // Generation 2 is not applied anywhere yet.
    assert_eq!(counts(&sc).6, 0, "upToDate after the spec change");
    assert_eq!(
        cond(&sc, cc::PROGRESSING).unwrap().reason,
        reasons::APPLYING_CONFIG
    );
    wait_event(&n, "fast", "spec.aio.ioUring is Required").await;
    // A sizing/policy change is hot-reloaded: the DaemonSet was not rewritten.
    assert_eq!(daemon_set(&c, &n, "fast").await.metadata.generation, ds_gen);

    // Agents apply generation 2: upToDate 0 → 3, rollout complete again.
    for (i, node) in selected.iter().enumerate() {
        let r = if i == 2 {
            Report::failing(2, "ENOSYS", 38)
        } else {
            Report::ok(2)
        };
        report(&agents[i], &n, "fast", node, &r).await;
    }
    wait_status(&c, &n, "fast", "upToDate 3 at generation 2", T, |sc| {
        anyhow::ensure!(counts(sc).6 == 3, "upToDate {}", counts(sc).6);
        let p = cond(sc, cc::PROGRESSING).unwrap();
        anyhow::ensure!(
            p.reason == reasons::ROLLOUT_COMPLETE,
            "Progressing {}",
            p.reason
        );
        Ok(())
    })
    .await;

    // Back to Preferred: no longer Degraded, and a Recovered event says so.
    patch_spec(&c, &n, "fast", json!({"aio": {"ioUring": "Preferred"}})).await;
    wait_status(&c, &n, "fast", "Degraded False under Preferred", T, |sc| {
        let d = cond(sc, cc::DEGRADED).unwrap();
        anyhow::ensure!(d.status == "False", "Degraded {} {}", d.status, d.reason);
        Ok(())
    })
    .await;
    wait_event(&n, "fast", "no longer degraded").await;

    // The fourth node joins the pool: desired follows the Node's labels.
    Api::<k8s_openapi::api::core::v1::Node>::all(c.clone())
        .patch(
            &names[3],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ringmaster-e2e/pool": pool}}})),
        )
        .await
        .unwrap();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_agent_pods(&c, &n, "fast", &all).await;
    wait_status(
        &c,
        &n,
        "fast",
        "desired=4 after labelling a node",
        T,
        |sc| {
            anyhow::ensure!(
                counts(sc).0 == 4 && counts(sc).1 == 3,
                "counts {:?}",
                counts(sc)
            );
            Ok(())
        },
    )
    .await;
    // And leaves it again.
    Api::<k8s_openapi::api::core::v1::Node>::all(c.clone())
        .patch(
            &names[3],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ringmaster-e2e/pool": null}}})),
        )
        .await
        .unwrap();
    wait_status(&c, &n, "fast", "desired=3 after unlabelling", T, |sc| {
        anyhow::ensure!(counts(sc).0 == 3, "counts {:?}", counts(sc));
        Ok(())
    })
    .await;
    op.process.assert_running();
    assert_eq!(
        op.counter("ringmaster_operator_reconcile_errors_total", |_| true),
        0,
        "no failed reconcile; log:\n{}",
        op.process.log()
    );
    drop(handles);
}
