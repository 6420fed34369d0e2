//! Node agents on the real control plane: simulated nodes, one `run` + one
//! `reader` process per node, authenticated with tokens bound to their own DaemonSet pods
//! under the chart's agent ClusterRole. One node's reader has io_uring, the others run
//! under a seccomp filter that fails it with ENOSYS or EPERM.
//!
//! Needs `KUBECONFIG` (hack/cluster.sh up), `RINGMASTER_BIN_DIR` with `ringmaster-agent`
//! and `seccomp-exec`, helm on PATH, and root (the agents tune the host's fs.aio-max-nr;
//! every test puts it back).

use crate::agent_support;
use crate::operator_support;

use ringmaster_api::reasons;
use std::time::Duration;

use agent_support::*;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use ringmaster_api::{cluster_conditions as cc, keys, node_conditions as cond, StorageNodeStatus};
use ringmaster_e2e::{jwt_claims, wait_for, KWOK_TAINT_KEY};
use serde_json::json;

fn condition<'a>(st: &'a StorageNodeStatus, t: &str) -> (&'a str, &'a str) {
    st.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        .unwrap_or_else(|| panic!("no {t} condition in {:?}", st.conditions))
}

async fn events_about(client: &kube::Client, node: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(node))
        })
        .collect()
}

/// Reasons of the events about `node`, waiting until `reason` is among them.
async fn wait_event(client: &kube::Client, node: &str, reason: &str) {
    wait_for(T, &format!("event {reason} about {node}"), || async {
        let evs = events_about(client, node).await;
        let reasons: Vec<_> = evs.iter().filter_map(|e| e.reason.clone()).collect();
        anyhow::ensure!(reasons.iter().any(|r| r == reason), "events: {reasons:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn agents_report_verdicts_labels_taints_and_settings() {
    let guard = SysctlGuard::take();
    // A low value the agents must raise: required = 1 × 8 × 512 + aio-nr + 65536 headroom.
    write_aio_max_nr(65_536.max(read_aio_nr() + 1));
    let mut f = Fleet::create(
        "agent",
        &[Uring::Works, Uring::Fails("ENOSYS"), Uring::Fails("EPERM")],
    )
    .await;
    let (ok, enosys, eperm) = (
        f.agents[0].node.clone(),
        f.agents[1].node.clone(),
        f.agents[2].node.clone(),
    );

    // Before any agent runs: a foreign label, a ringmaster.io/ label nobody recorded as
    // owned, and a stale owned label (a reason left from an earlier unsupported verdict,
    // set by another manager so server-side apply alone would not remove it).
    f.node_api()
        .patch(
            &ok,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "labels": {"example.com/team": "blue", "ringmaster.io/custom": "keep",
                           keys::LABEL_IO_URING_REASON: "EPERM"},
                "annotations": {keys::OWNED_LABELS_ANNOTATION:
                    format!("{},{}", keys::LABEL_IO_URING_REASON, keys::LABEL_IO_URING)},
            }})),
        )
        .await
        .unwrap();

    let sc = f
        .create_cluster("unsupportedNodes: Taint\nsysctl: {aioMaxNr: 65536}")
        .await;
    let gen = sc.metadata.generation.unwrap();
    f.start_all();

    for a in &f.agents {
        // Each agent's identity is a token bound to its own pod on its own node.
        let kc = std::fs::read_to_string(&a.kubeconfig).unwrap();
        let token = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .expect("token in kubeconfig");
        let claims = jwt_claims(token.trim_matches('"'));
        assert_eq!(
            claims["kubernetes.io"]["node"]["name"], a.node,
            "token of {} not bound to a pod on its node: {claims}",
            a.node
        );
        assert_eq!(claims["kubernetes.io"]["pod"]["name"], a.pod);
    }

    let mut sns = Vec::new();
    for a in &f.agents {
        sns.push(f.wait_applied(&a.node, gen).await);
    }
    let required = sns[0]
        .status
        .as_ref()
        .unwrap()
        .aio
        .as_ref()
        .unwrap()
        .required;
    assert!(required > 65_536, "required {required}");
    assert!(
        read_aio_max_nr() >= required,
        "fs.aio-max-nr {} below required {required}",
        read_aio_max_nr()
    );

    // Supported node.
    let st = sns[0].status.clone().unwrap();
    let io = st.io_uring.clone().unwrap();
    assert!(io.supported && io.read_verified, "{io:?}");
    assert_eq!(io.verdict, "supported");
    assert_eq!(io.requested_entries, 512);
    assert_eq!(st.worker_mode.as_deref(), Some("io_uring"));
    assert_eq!(condition(&st, cond::TUNED).0, "True");
    assert_eq!(condition(&st, cond::IO_URING_SUPPORTED).0, "True");
    assert_eq!(condition(&st, cond::READY), ("True", reasons::SERVING));
    let aio = st.aio.clone().unwrap();
    assert!(aio.tuned && aio.current >= aio.required);
    let owner = &sns[0].owner_references()[0];
    let node_ok = f.node(&ok).await;
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Node", node_ok.uid().as_ref())
    );
    assert_eq!(sns[0].spec.cluster, format!("{}/{CLUSTER}", f.ns()));
    assert_eq!(
        sns[0]
            .labels()
            .get(keys::LABEL_STORAGENODE_CLUSTER_NAMESPACE)
            .map(String::as_str),
        Some(f.ns())
    );

    // Failing nodes: reason and errno from the reader's own seccomp context.
    for (sn, errno_name, errno) in [(&sns[1], "ENOSYS", 38), (&sns[2], "EPERM", 1)] {
        let st = sn.status.clone().unwrap();
        let io = st.io_uring.clone().unwrap();
        assert!(!io.supported, "{}: {io:?}", sn.name_any());
        assert_eq!(io.verdict, "unsupported");
        assert_eq!(io.reason.as_deref(), Some(errno_name));
        assert_eq!(io.errno, Some(errno));
        assert_eq!(st.seccomp_mode.as_deref(), Some("filter"));
        assert_eq!(
            st.worker_mode.as_deref(),
            Some("pread"),
            "Preferred falls back"
        );
        assert_eq!(
            condition(&st, cond::IO_URING_SUPPORTED),
            ("False", errno_name)
        );
        assert_eq!(condition(&st, cond::READY).0, "True");
    }

    // Labels: exactly ours; the foreign and unrecorded ones untouched; the stale one gone.
    let want = |uring: &str, reason: Option<&str>| {
        let mut m = std::collections::BTreeMap::new();
        m.insert(keys::LABEL_IO_URING.to_string(), uring.to_string());
        if let Some(r) = reason {
            m.insert(keys::LABEL_IO_URING_REASON.to_string(), r.to_string());
        }
        m.insert(keys::LABEL_AIO_TUNED.to_string(), "true".to_string());
        m.insert(keys::LABEL_READY.to_string(), "true".to_string());
        m
    };
    let n = wait_for(T, "stale owned label removed", || async {
        let n = f.node(&ok).await;
        anyhow::ensure!(
            !n.labels().contains_key(keys::LABEL_IO_URING_REASON),
            "{:?}",
            n.labels()
        );
        Ok(n)
    })
    .await;
    let mut expect = want("supported", None);
    expect.insert("ringmaster.io/custom".into(), "keep".into());
    assert_eq!(ringmaster_labels(&n), expect);
    assert_eq!(n.labels()["example.com/team"], "blue");
    assert_eq!(
        n.annotations()[keys::OWNED_LABELS_ANNOTATION],
        "ringmaster.io/aio-tuned,ringmaster.io/io-uring,ringmaster.io/ready"
    );
    assert_eq!(
        n.annotations()[keys::CLUSTER_ANNOTATION],
        format!("{}/{CLUSTER}", f.ns())
    );
    assert_eq!(ringmaster_taints(&n), 0, "supported node tainted");
    assert!(has_kwok_taint(&n));
    for (node, reason) in [(&enosys, "ENOSYS"), (&eperm, "EPERM")] {
        let n = wait_for(T, &format!("taint on {node}"), || async {
            let n = f.node(node).await;
            anyhow::ensure!(ringmaster_taints(&n) == 1, "taints {:?}", n.spec);
            Ok(n)
        })
        .await;
        assert_eq!(ringmaster_labels(&n), want("unsupported", Some(reason)));
        assert!(has_kwok_taint(&n), "kwok's taint dropped on {node}");
    }

    // Verified settings for the storage service, matching the verdict.
    let toml = f.agents[0]
        .settings_toml()
        .expect("aio.toml on the supported node");
    assert!(toml.contains("[server.aio_read_worker]"), "{toml}");
    assert!(toml.contains("enable_io_uring = true"), "{toml}");
    assert!(toml.contains("max_events = 512"), "{toml}");
    assert!(toml.contains(&format!("generation = {gen}")), "{toml}");
    let ss = st.service_settings.clone().unwrap();
    assert!(ss.enable_io_uring && ss.max_events == 512 && ss.num_threads == 8);
    for a in &f.agents[1..] {
        let toml = a.settings_toml().expect("aio.toml on a failing node");
        assert!(toml.contains("enable_io_uring = false"), "{toml}");
        let env = std::fs::read_to_string(a.host_state_dir.path().join("aio.env")).unwrap();
        assert!(
            env.contains("RINGMASTER_AIO_ENABLE_IO_URING=false"),
            "{env}"
        );
    }

    // Events on transitions.
    wait_event(&f.client, &enosys, reasons::IO_URING_UNSUPPORTED).await;
    wait_event(&f.client, &eperm, reasons::IO_URING_UNSUPPORTED).await;
    // The three agents share this host's sysctl: the one that raised it recorded the
    // original (the others found it high enough) and announced it.
    let mut raisers = Vec::new();
    for a in &f.agents {
        let sn = f.storage_nodes().get(&a.node).await.unwrap();
        if sn.status.unwrap().aio.unwrap().original.is_some() {
            raisers.push(a.node.clone());
        }
    }
    assert!(
        !raisers.is_empty(),
        "no agent recorded raising fs.aio-max-nr from 65536"
    );
    for n in &raisers {
        wait_event(&f.client, n, reasons::TUNED).await;
    }

    // The shipped seccomp profile is installed for the kubelet; health and metrics served.
    let prof = f.agents[0]
        .seccomp_dir
        .path()
        .join(ringmaster_api::SHIPPED_SECCOMP_PROFILE);
    let prof = std::fs::read_to_string(&prof).expect("Localhost profile installed");
    assert!(prof.contains("io_uring_setup"));
    let addr = f.agents[0].agent_addr().await;
    wait_for(T, "agent /readyz", || async {
        let (code, body) = http_get(&addr, "/readyz");
        anyhow::ensure!(code == 200, "{code} {body}");
        Ok(())
    })
    .await;
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        sample(&metrics, "ringmaster_agent_io_uring_supported"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ringmaster_agent_applied_generation"),
        Some(gen as u64),
        "{metrics}"
    );

    // A steady node makes no API writes: two resync passes (3 s each) later, the count is the same.
    // The three "nodes" are one host: they share fs.aio-max-nr and fs.aio-nr, which each agent
    // reports (`aio`, the Tuned message, `serviceSettings.aioBudget`). When either moves (an
    // agent's raise, any process's io_setup), every agent rightly writes once more: its node
    // changed. So the window opens once agent 0 reports what the host says now, and a window
    // in which the host's values moved is void and tried again; in a window where they held,
    // any write fails the test.
    let writes = |m: &str| {
        sample(m, "ringmaster_agent_api_writes_total").expect("api_writes_total in /metrics")
    };
    let passes =
        |m: &str| sample(m, "ringmaster_agent_passes_total").expect("passes_total in /metrics");
    let host_aio = || (read_aio_max_nr(), read_aio_nr());
    let mut quiet_window = false;
    for window in 1..=3 {
        wait_for(
            T,
            "agent 0 reports the host's fs.aio-max-nr and fs.aio-nr",
            || async {
                let aio = f.node_status(&ok).await?.aio;
                let reported = aio.as_ref().map(|a| (a.current, a.aio_nr));
                anyhow::ensure!(
                    reported == Some(host_aio()),
                    "reported (aio-max-nr, aio-nr) {reported:?}, host {:?}",
                    host_aio()
                );
                Ok(())
            },
        )
        .await;
        let host_before = host_aio();
        let before = http_get(&addr, "/metrics").1;
        let mut host_moved = None;
        let end = std::time::Instant::now() + Duration::from_secs(7);
        while std::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if host_moved.is_none() && host_aio() != host_before {
                host_moved = Some(host_aio());
            }
        }
        let after = http_get(&addr, "/metrics").1;
        if let Some(moved) = host_moved {
            eprintln!(
                "steady window {window}: the host's (fs.aio-max-nr, fs.aio-nr) moved from \
                 {host_before:?} to {moved:?} (another process); trying again"
            );
            continue;
        }
        assert!(
            passes(&after) >= passes(&before) + 2,
            "no resync passes ran"
        );
        // The agent logs each StorageNode status write with the fields that changed: a failure
        // here shows which input moved.
        let status_writes: Vec<String> = f.agents[0]
            .agent
            .as_ref()
            .map(|p| p.log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("StorageNode status applied"))
            .map(String::from)
            .collect();
        assert_eq!(
            writes(&after),
            writes(&before),
            "a steady node wrote to the API while the host's aio values held at {host_before:?}; \
             its status writes:\n{}",
            status_writes.join("\n")
        );
        quiet_window = true;
        break;
    }
    assert!(
        quiet_window,
        "the host's fs.aio-max-nr/fs.aio-nr moved in each of 3 steady windows: something else on \
         this host keeps changing them"
    );

    // The reader serves reads from the data dir.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.agents[1].reader_dir().join("reader.json")).unwrap(),
    )
    .unwrap();
    let listen = report["listen_addr"].as_str().expect("reader listening");
    let (code, body) = http_get(listen, "/v1/files/d0/hello.txt");
    assert!(code == 200 || code == 206, "{code} {body}");
    assert_eq!(body, "hello from ringmaster\n");

    drop(f);
    drop(guard);
}

#[tokio::test]
async fn config_changes_reach_agents_and_restart_converges() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create("agent-live", &[Uring::Works, Uring::Fails("ENOSYS")]).await;
    let (ok, bad) = (f.agents[0].node.clone(), f.agents[1].node.clone());
    let g1 = f
        .start_and_wait_applied("unsupportedNodes: Taint\nsysctl: {aioMaxNr: 65536}")
        .await;

    // Drift: somebody lowers fs.aio-max-nr; the periodic pass raises it again.
    let required = f
        .storage_nodes()
        .get(&ok)
        .await
        .unwrap()
        .status
        .unwrap()
        .aio
        .unwrap()
        .required;
    write_aio_max_nr(required - 1);
    wait_for(T, "fs.aio-max-nr re-raised after drift", || async {
        let now = read_aio_max_nr();
        anyhow::ensure!(now >= required, "fs.aio-max-nr {now} < {required}");
        Ok(())
    })
    .await;

    // A new ring size reaches every agent without a restart.
    let g2 = f
        .patch_cluster(json!({"aio": {"maxEvents": 256}}))
        .await
        .metadata
        .generation
        .unwrap();
    assert!(g2 > g1);
    for node in [&ok, &bad] {
        let sn = f.wait_applied(node, g2).await;
        let st = sn.status.unwrap();
        assert_eq!(st.io_uring.unwrap().requested_entries, 256, "{node}");
        assert_eq!(st.service_settings.unwrap().max_events, 256, "{node}");
    }
    let toml = f.agents[0].settings_toml().unwrap();
    assert!(
        toml.contains("max_events = 256") && toml.contains(&format!("generation = {g2}")),
        "{toml}"
    );

    // Label policy: the taint goes, the labels stay.
    let g3 = f
        .patch_cluster(json!({"unsupportedNodes": "Label"}))
        .await
        .metadata
        .generation
        .unwrap();
    f.wait_applied(&bad, g3).await;
    wait_for(T, "taint removed under Label", || async {
        let n = f.node(&bad).await;
        anyhow::ensure!(ringmaster_taints(&n) == 0, "{:?}", n.spec);
        anyhow::ensure!(has_kwok_taint(&n), "kwok taint dropped");
        Ok(())
    })
    .await;

    // Required: the failing node's reader deliberately serves nothing; the node is not ready.
    let g3r = f
        .patch_cluster(json!({"aio": {"ioUring": "Required"}}))
        .await
        .metadata
        .generation
        .unwrap();
    let st = f.wait_applied(&bad, g3r).await.status.unwrap();
    assert_eq!(st.worker_mode.as_deref(), Some("none"));
    assert_eq!(
        condition(&st, cond::READY),
        ("False", reasons::IO_URING_REQUIRED)
    );
    assert!(!st.service_settings.unwrap().enable_io_uring);
    let st_ok = f.wait_applied(&ok, g3r).await.status.unwrap();
    assert_eq!(st_ok.worker_mode.as_deref(), Some("io_uring"));
    wait_for(
        T,
        "ready=false on the Required, unsupported node",
        || async {
            let l = ringmaster_labels(&f.node(&bad).await);
            anyhow::ensure!(
                l.get(keys::LABEL_READY).map(String::as_str) == Some("false"),
                "{l:?}"
            );
            Ok(())
        },
    )
    .await;
    let g3 = f
        .patch_cluster(json!({"aio": {"ioUring": "Preferred"}}))
        .await
        .metadata
        .generation
        .unwrap();
    f.wait_applied(&bad, g3).await;

    // SIGKILL the failing node's agent, change the cluster while it is down, restart it.
    let before = ringmaster_labels(&f.node(&bad).await);
    f.agent(&bad).agent.as_mut().unwrap().kill();
    let g4 = f
        .patch_cluster(json!({"unsupportedNodes": "Taint"}))
        .await
        .metadata
        .generation
        .unwrap();
    let ns = f.ns().to_string();
    f.agent(&bad).start_agent(&ns);
    f.wait_applied(&bad, g4).await;
    let n = wait_for(T, "taint back after restart", || async {
        let n = f.node(&bad).await;
        anyhow::ensure!(ringmaster_taints(&n) == 1, "{:?}", n.spec);
        Ok(n)
    })
    .await;
    assert_eq!(
        ringmaster_labels(&n),
        before,
        "labels lost or duplicated after restart"
    );
    assert_eq!(
        n.annotations()[keys::OWNED_LABELS_ANNOTATION],
        "ringmaster.io/aio-tuned,ringmaster.io/io-uring,ringmaster.io/io-uring-reason,ringmaster.io/ready"
    );
    // Killed again right after a start (mid-pass), restarted: still one taint, same labels.
    f.agent(&bad).agent.as_mut().unwrap().kill();
    f.agent(&bad).start_agent(&ns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.agent(&bad).agent.as_mut().unwrap().kill();
    f.agent(&bad).start_agent(&ns);
    f.wait_applied(&bad, g4).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // one resync pass
    let n = f.node(&bad).await;
    assert_eq!(ringmaster_taints(&n), 1);
    assert_eq!(ringmaster_labels(&n), before);

    // Deleting the Node garbage-collects its StorageNode (owner reference).
    f.agent(&bad).agent.as_mut().unwrap().kill();
    f.node_api()
        .delete(&bad, &Default::default())
        .await
        .expect("deleting the node");
    let sns = f.storage_nodes();
    wait_for(
        Duration::from_secs(90),
        "StorageNode garbage-collected with its Node",
        || async {
            match sns.get_opt(&bad).await? {
                None => Ok(()),
                Some(sn) => anyhow::bail!("still there: {:?}", sn.metadata.deletion_timestamp),
            }
        },
    )
    .await;
    // The other node is unaffected.
    assert!(sns.get_opt(&ok).await.unwrap().is_some());
}

#[tokio::test]
async fn deleting_the_cluster_restores_the_node() {
    let guard = SysctlGuard::take();
    // One node on this host: its agent is the only one that tunes the real sysctl here.
    let low = 70_000.max(read_aio_nr() + 1000);
    write_aio_max_nr(low);
    let mut f = Fleet::create("agent-restore", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let sc = f
        .create_cluster("sysctl: {aioMaxNr: 300000, restoreOnDelete: true}")
        .await;
    f.hold_finalizer().await;
    f.start_all();
    let sn = f.wait_applied(&node, sc.metadata.generation.unwrap()).await;
    let aio = sn.status.unwrap().aio.unwrap();
    assert_eq!(aio.original, Some(low));
    assert!(read_aio_max_nr() >= 300_000);

    // SIGTERM (a rolling update) restores nothing.
    let st = f.agents[0].agent.as_mut().unwrap().stop();
    assert!(st.success(), "agent exit on SIGTERM: {st}");
    assert!(read_aio_max_nr() >= 300_000, "SIGTERM restored the sysctl");
    assert_eq!(ringmaster_labels(&f.node(&node).await).len(), 3);
    let ns = f.ns().to_string();
    f.agents[0].start_agent(&ns);
    f.wait_applied(&node, sc.metadata.generation.unwrap()).await;

    f.delete_cluster().await;
    f.wait_restored(&node).await;
    assert_eq!(read_aio_max_nr(), low, "fs.aio-max-nr not restored");
    let n = f.node(&node).await;
    assert!(ringmaster_labels(&n).is_empty(), "{:?}", n.labels());
    assert!(!n.annotations().contains_key(keys::OWNED_LABELS_ANNOTATION));
    assert!(!n.annotations().contains_key(keys::CLUSTER_ANNOTATION));
    assert_eq!(ringmaster_taints(&n), 0);
    assert!(
        f.agents[0].settings_toml().is_none(),
        "aio.toml left behind"
    );
    wait_event(&f.client, &node, reasons::RESTORED).await;

    // The "operator" releases its finalizer; the cluster goes.
    f.release_finalizer().await;
    wait_for(T, "StorageCluster gone", || async {
        anyhow::ensure!(f.clusters().get_opt(CLUSTER).await?.is_none());
        Ok(())
    })
    .await;
    f.agents[0].agent.as_mut().unwrap().assert_running();
    drop(f);
    drop(guard);
}

#[tokio::test]
async fn missing_node_and_bad_reader_report_do_not_crash_the_agent() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create("agent-bad", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let gen = f
        .create_cluster_generation("sysctl: {mode: Verify, aioMaxNr: 0}")
        .await;
    // Verify mode never writes: make the value too low for what the cluster needs.
    let low = 65_536.max(read_aio_nr() + 1);
    write_aio_max_nr(low);
    // A reader report that is not JSON: a condition, not a crash.
    std::fs::create_dir_all(f.agents[0].reader_dir()).unwrap();
    std::fs::write(f.agents[0].reader_dir().join("reader.json"), b"{oops").unwrap();
    let ns = f.ns().to_string();
    f.agents[0].start_agent(&ns);
    wait_for(
        T,
        "IoUringSupported Unknown/ReaderReportInvalid",
        || async {
            let sn = f.storage_nodes().get(&node).await?;
            let st = sn.status.unwrap_or_default();
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == cond::IO_URING_SUPPORTED)
                .cloned();
            anyhow::ensure!(
                c.as_ref().is_some_and(
                    |c| c.status == "Unknown" && c.reason == reasons::READER_REPORT_INVALID
                ),
                "{c:?}"
            );
            Ok(())
        },
    )
    .await;
    // Now the real reader replaces it and the node converges.
    f.agents[0].start_reader();
    let sn = f.wait_applied(&node, gen).await;
    let st = sn.status.unwrap();
    assert_eq!(
        condition(&st, cond::TUNED),
        ("False", reasons::BELOW_REQUIRED)
    );
    assert_eq!(condition(&st, cond::READY), ("False", reasons::NOT_TUNED));
    assert_eq!(read_aio_max_nr(), low, "Verify mode wrote the sysctl");
    assert_eq!(
        ringmaster_labels(&f.node(&node).await)[keys::LABEL_AIO_TUNED],
        "false"
    );
    f.agents[0].agent.as_mut().unwrap().assert_running();

    // An agent whose Node does not exist keeps running and says why on /readyz.
    let mut ghost = NodeAgent {
        node: "no-such-node".into(),
        uring: Uring::Works,
        pod: String::new(),
        kubeconfig: f.agents[0].kubeconfig.clone(),
        state_dir: TempDir::new("ghost-state"),
        host_state_dir: TempDir::new("ghost-host"),
        seccomp_dir: TempDir::new("ghost-seccomp"),
        sysctl_d_dir: TempDir::new("ghost-sysctl"),
        agent: None,
        reader: None,
    };
    ghost.start_agent(&ns);
    let addr = ghost.agent_addr().await;
    wait_for(T, "ghost agent not ready: node not found", || async {
        let (code, body) = http_get(&addr, "/readyz");
        anyhow::ensure!(code == 503 && body.contains("not found"), "{code} {body}");
        Ok(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ghost.agent.as_mut().unwrap().assert_running();
    assert!(f
        .storage_nodes()
        .get_opt("no-such-node")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn read_only_proc_sys_is_a_condition_not_a_crash() {
    let _guard = SysctlGuard::take();
    let low = 65_536.max(read_aio_nr() + 1);
    write_aio_max_nr(low);
    let mut f = Fleet::create("agent-ro", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    f.create_cluster("sysctl: {aioMaxNr: 300000}").await;
    f.agents[0].start_reader();
    let ns = f.ns().to_string();
    let mut child = f.agents[0].start_agent_read_only_proc_sys(&ns);
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(&mut child);
    let st = wait_for(T, "Tuned=False/ReadOnlySysctl", || async {
        let sn = f.storage_nodes().get(&node).await?;
        let st = sn.status.unwrap_or_default();
        let c = st.conditions.iter().find(|c| c.type_ == cond::TUNED);
        anyhow::ensure!(
            c.is_some_and(|c| c.status == "False" && c.reason == reasons::READ_ONLY_SYSCTL),
            "{:?}",
            st.conditions
        );
        Ok(st)
    })
    .await;
    let msg = &st
        .conditions
        .iter()
        .find(|c| c.type_ == cond::TUNED)
        .unwrap()
        .message;
    assert!(msg.contains("read-only") && msg.contains("fix"), "{msg}");
    assert_eq!(read_aio_max_nr(), low);
    wait_event(&f.client, &node, reasons::TUNE_FAILED).await;
    assert_eq!(
        ringmaster_labels(&f.node(&node).await)[keys::LABEL_AIO_TUNED],
        "false"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "agent exited: {}",
        std::fs::read_to_string(f.agents[0].state_dir.path().join("agent-ro.log")).unwrap()
    );
    let addr = f.agents[0].agent_addr().await;
    wait_for(T, "/readyz 503 naming the read-only /proc/sys", || async {
        let (code, body) = http_get(&addr, "/readyz");
        anyhow::ensure!(code == 503 && body.contains("read-only"), "{code} {body}");
        Ok(())
    })
    .await;
}

/// Operator-judged bad input: a `dataDirs[1].hostPath` that does not exist on the
/// node. The reader checks it as it would use it, serves the other dir, and reports; the
/// agent says `DataDirsReady=False/DataDirMissing` naming `spec.readService.dataDirs[1].hostPath`,
/// marks the node not ready and announces it once; the real operator (its own
/// ServiceAccount) turns it into `Degraded=True/DataDirUnavailable` naming the field and
/// the node. Creating the dir heals it within the reader's re-check interval, with no
/// process restarted and no spec change.
#[tokio::test]
async fn missing_data_dir_is_a_condition_naming_the_field_and_heals() {
    let _guard = SysctlGuard::take();
    let mut f = Fleet::create("agent-datadir", &[Uring::Works]).await;
    let node = f.agents[0].node.clone();
    let ns = f.ns().to_string();
    let id = operator_support::OperatorIdentity::create(&f.ns);
    // The test's data dirs lie below the e2e scratch dir: the admin allows that root.
    let root = ringmaster_e2e::scratch_dir();
    let mut op = operator_support::start_operator(
        &id,
        "datadir-op",
        &["--allowed-data-dir-root", root.to_str().unwrap()],
    );

    // d0: the fleet's data dir (exists, holds hello.txt). d1: under an existing parent,
    // not created yet (the parent is removed on drop).
    let parent = TempDir::new("datadir-parent");
    let missing = parent.path().join("data1");
    let missing_s = missing.to_str().unwrap().to_string();
    let sc = f
        .create_cluster_spec(json!({
            "nodeSelector": {FLEET_LABEL: &ns},
            "tolerations": [{"key": KWOK_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "sysctl": {"aioMaxNr": 65536},
            "readService": {"dataDirs": [
                {"name": "d0", "hostPath": f.data_dir.path()},
                {"name": "d1", "hostPath": &missing_s},
            ]},
        }))
        .await;
    let gen = sc.metadata.generation.unwrap();
    f.start_all();
    let sn = f.wait_applied(&node, gen).await;
    let st = sn.status.unwrap();

    // The node: the field by index, the host path, the node, the fix.
    let dirs_ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == cond::DATA_DIRS_READY)
        .unwrap_or_else(|| panic!("no DataDirsReady in {:?}", st.conditions));
    assert_eq!(
        (dirs_ready.status.as_str(), dirs_ready.reason.as_str()),
        ("False", reasons::DATA_DIR_MISSING),
        "{}",
        dirs_ready.message
    );
    let want = format!(
        "spec.readService.dataDirs[1].hostPath {missing_s:?} (name d1) does not exist on node {node}: \
         create it (Ringmaster never creates host directories), remove the entry, or narrow spec.nodeSelector"
    );
    assert!(
        dirs_ready.message.starts_with(&want),
        "DataDirsReady message\n  got: {}\n want: {want}...",
        dirs_ready.message
    );
    assert_eq!(
        condition(&st, cond::READY),
        ("False", reasons::DATA_DIR_UNAVAILABLE)
    );
    let by_name = |n: &str| st.data_dirs.iter().find(|d| d.name == n).cloned().unwrap();
    assert!(by_name("d0").available, "{:?}", st.data_dirs);
    let d1 = by_name("d1");
    assert!(!d1.available);
    assert_eq!(d1.reason.as_deref(), Some("NotFound"));
    assert_eq!(d1.host_path, missing_s);
    assert_eq!(
        ringmaster_labels(&f.node(&node).await)[keys::LABEL_READY],
        "false"
    );
    wait_event(&f.client, &node, reasons::DATA_DIR_UNAVAILABLE).await;

    // The existing dir still serves a real range read through the reader.
    let state = f.agents[0].state_dir.path().to_path_buf();
    let addr = reader_listen_addr(&state).expect("the reader serves d0");
    let (code, body) = http_range(&addr, "/v1/files/d0/hello.txt", "6-9");
    assert_eq!((code, body.as_str()), (206, "from"));
    let (code, _) = http_range(&addr, "/v1/files/d1/x", "0-0");
    assert_eq!(code, 404, "d1 is not served while missing");

    // The cluster: Degraded names the field and the node; the Degrade event fires.
    let sc = operator_support::wait_status(
        &f.client,
        &ns,
        CLUSTER,
        "Degraded=True/DataDirUnavailable",
        T,
        |sc| {
            let d = operator_support::cond(sc, cc::DEGRADED)
                .ok_or_else(|| anyhow::anyhow!("no Degraded"))?;
            anyhow::ensure!(
                d.status == "True" && d.reason == reasons::DATA_DIR_UNAVAILABLE,
                "Degraded {} {}",
                d.status,
                d.reason
            );
            Ok(())
        },
    )
    .await;
    let deg = operator_support::cond(&sc, cc::DEGRADED)
        .unwrap()
        .message
        .clone();
    let want = format!(
        "spec.readService.dataDirs[1].hostPath {missing_s:?} is missing on 1 of 1 nodes: {node}; \
         create the directory on those nodes or narrow spec.nodeSelector"
    );
    assert_eq!(deg, want);
    let ready = operator_support::cond(&sc, cc::READY).unwrap();
    assert!(
        ready.message.contains(&format!(
            "{node} (spec.readService.dataDirs[1].hostPath missing)"
        )),
        "{}",
        ready.message
    );
    operator_support::wait_event(&ns, CLUSTER, "Warning DataDirUnavailable").await;

    // The admin creates the dir: within the reader's re-check interval the node and the
    // cluster recover, nothing restarted, no spec change.
    let agent_pid = f.agents[0].agent.as_ref().unwrap().pid();
    let reader_pid = f.agents[0].reader.as_ref().unwrap().pid();
    std::fs::create_dir(&missing).unwrap();
    std::fs::write(missing.join("x.txt"), b"0123456789").unwrap();
    let t0 = std::time::Instant::now();
    // Re-check every 10 s, agent poll 0.2 s, then one StorageNode write and one label.
    let heal = Duration::from_secs(10 + 10);
    wait_for(
        heal,
        "DataDirsReady=True and ringmaster.io/ready=true",
        || async {
            let st = f.node_status(&node).await?;
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == cond::DATA_DIRS_READY);
            anyhow::ensure!(
                c.is_some_and(|c| c.status == "True" && c.reason == reasons::ALL_AVAILABLE),
                "{c:?}"
            );
            anyhow::ensure!(
                st.data_dirs.iter().all(|d| d.available),
                "{:?}",
                st.data_dirs
            );
            let labels = ringmaster_labels(&f.node(&node).await);
            anyhow::ensure!(labels[keys::LABEL_READY] == "true", "{labels:?}");
            Ok(())
        },
    )
    .await;
    let healed_after = t0.elapsed();
    operator_support::wait_status(&f.client, &ns, CLUSTER, "Degraded=False", T, |sc| {
        let d = operator_support::cond(sc, cc::DEGRADED)
            .ok_or_else(|| anyhow::anyhow!("no Degraded"))?;
        anyhow::ensure!(d.status == "False", "Degraded {} {}", d.status, d.reason);
        Ok(())
    })
    .await;
    wait_event(&f.client, &node, reasons::DATA_DIRS_AVAILABLE).await;
    let addr = reader_listen_addr(&state).expect("the reader serves d0 and d1");
    assert_eq!(
        http_range(&addr, "/v1/files/d1/x.txt", "2-4"),
        (206, "234".to_string())
    );
    assert_eq!(
        http_range(&addr, "/v1/files/d0/hello.txt", "6-9"),
        (206, "from".to_string())
    );
    let a = &mut f.agents[0];
    a.agent.as_mut().unwrap().assert_running();
    a.reader.as_mut().unwrap().assert_running();
    assert_eq!(a.agent.as_ref().unwrap().pid(), agent_pid);
    assert_eq!(a.reader.as_ref().unwrap().pid(), reader_pid);
    op.process.assert_running();
    eprintln!(
        "figures: missing dataDir created on the host: node Ready again after {healed_after:?}"
    );

    // Clean up while the operator runs, so its finalizer lets the cluster go.
    f.delete_cluster().await;
    wait_for(T, "StorageCluster deleted", || async {
        anyhow::ensure!(
            f.clusters().get_opt(CLUSTER).await?.is_none(),
            "still there"
        );
        Ok(())
    })
    .await;
}
