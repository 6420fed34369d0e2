use super::*;
use crate::fixtures::{cluster, node, three_nodes};
use crate::scheduling::excluded_nodes;
use k8s_openapi::api::apps::v1::DaemonSetStatus;
use kube::ResourceExt;
use ringmaster_api::{
    cluster_conditions as cc, reasons, AioReport, DataDirReport, IoUringPolicy, IoUringReport,
    StorageNodeSpec, StorageNodeStatus, UnsupportedNode, MAX_UNSUPPORTED_LISTED,
};

fn cond(type_: &str, ok: bool) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: "R".into(),
        message: "m".into(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// A report: io_uring supported or failing with `errno`, tuned, ready, generation.
fn report(name: &str, errno: Option<(&str, i32)>, gen: i64) -> StorageNode {
    let mut sn = StorageNode::new(
        name,
        StorageNodeSpec {
            node_name: name.into(),
            cluster: "storage/fast".into(),
        },
    );
    let supported = errno.is_none();
    sn.status = Some(StorageNodeStatus {
        kernel: Some("6.8.0".into()),
        io_uring: Some(IoUringReport {
            verdict: if supported {
                "supported"
            } else {
                "unsupported"
            }
            .into(),
            supported,
            reason: errno.map(|e| e.0.into()),
            errno: errno.map(|e| e.1),
            ..Default::default()
        }),
        aio: Some(AioReport {
            tuned: true,
            ..Default::default()
        }),
        applied_generation: Some(gen),
        conditions: vec![
            cond(nc::TUNED, true),
            cond(nc::IO_URING_SUPPORTED, supported),
            cond(nc::READY, supported),
        ],
        ..Default::default()
    });
    sn
}

fn ds(desired: i32, updated: i32, available: i32) -> DaemonSet {
    let mut d = DaemonSet::default();
    d.metadata.generation = Some(1);
    d.status = Some(DaemonSetStatus {
        observed_generation: Some(1),
        desired_number_scheduled: desired,
        updated_number_scheduled: Some(updated),
        number_available: Some(available),
        ..Default::default()
    });
    d
}

struct World {
    nodes: Vec<Node>,
    reports: Vec<StorageNode>,
    clusters: Vec<StorageCluster>,
    ds: Option<DaemonSet>,
    refused: Vec<Violation>,
}

impl World {
    fn run(&self, sc: &StorageCluster) -> Outcome {
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        let sns: HashMap<String, &StorageNode> =
            self.reports.iter().map(|s| (s.name_any(), s)).collect();
        let clusters: Vec<&StorageCluster> = self.clusters.iter().collect();
        aggregate(&Inputs {
            cluster: sc,
            nodes: &nodes,
            storage_nodes: &sns,
            clusters: &clusters,
            daemon_set: self.ds.as_ref(),
            refused: &self.refused,
            now: Timestamp::from_second(1_000_000).unwrap(),
        })
    }
}

fn get<'a>(o: &'a Outcome, t: &str) -> &'a Condition {
    find(&o.status.conditions, t).unwrap()
}

#[test]
fn counts_and_unsupported_list() {
    let w = World {
        nodes: three_nodes(),
        reports: vec![
            report("n1", None, 3),
            report("n2", Some(("ENOSYS", 38)), 2),
            report("other", None, 3), // not selected: not counted
        ],
        clusters: vec![],
        ds: Some(ds(2, 2, 2)),
        refused: vec![],
    };
    let sc = cluster("fast", 10, &[("tier", "storage")]);
    let o = w.run(&sc);
    let s = &o.status;
    assert_eq!(
        (
            s.desired,
            s.reporting,
            s.tuned,
            s.io_uring_supported,
            s.io_uring_unsupported,
            s.ready,
            s.up_to_date
        ),
        (2, 2, 2, 1, 1, 1, 1)
    );
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(
        s.config_hash.as_deref(),
        Some(sc.spec.config_hash().as_str())
    );
    assert_eq!(
        s.unsupported_nodes,
        vec![UnsupportedNode {
            name: "n2".into(),
            reason: Some("ENOSYS".into()),
            errno: Some(38),
            kernel: Some("6.8.0".into())
        }]
    );
    let ready = get(&o, cc::READY);
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("1 of 2 selected nodes ready"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("n2 (io_uring ENOSYS)"),
        "{}",
        ready.message
    );
    let prog = get(&o, cc::PROGRESSING);
    assert_eq!(
        (prog.status.as_str(), prog.reason.as_str()),
        ("True", reasons::APPLYING_CONFIG)
    );
    assert!(prog.message.contains("n2"));
    // Preferred: unsupported nodes are not a problem to fix.
    let deg = get(&o, cc::DEGRADED);
    assert_eq!(
        (deg.status.as_str(), deg.reason.as_str()),
        ("False", reasons::AS_EXPECTED)
    );
    assert!(deg.message.contains("1 nodes use the pread fallback"));
}

#[test]
fn required_policy_flips_degraded() {
    let w = World {
        nodes: three_nodes(),
        reports: vec![report("n1", None, 3), report("n2", Some(("EPERM", 1)), 3)],
        clusters: vec![],
        ds: Some(ds(2, 2, 2)),
        refused: vec![],
    };
    let mut sc = cluster("fast", 10, &[("tier", "storage")]);
    sc.spec.aio.io_uring = IoUringPolicy::Required;
    let o = w.run(&sc);
    let deg = get(&o, cc::DEGRADED);
    assert_eq!(
        (deg.status.as_str(), deg.reason.as_str()),
        ("True", reasons::IO_URING_UNSUPPORTED)
    );
    assert!(deg.message.contains("n2 (EPERM)"), "{}", deg.message);
    assert!(deg.message.contains("spec.aio.ioUring"), "{}", deg.message);
    assert!(o.transitions.iter().any(|t| t.warning
        && t.reason == reasons::IO_URING_UNSUPPORTED
        && t.note.contains("node n2")));
    assert!(o
        .transitions
        .iter()
        .any(|t| t.reason == reasons::IO_URING_UNSUPPORTED && t.note.contains("1 of 2")));
}

#[test]
fn all_ready_and_rolled_out() {
    let w = World {
        nodes: three_nodes(),
        reports: vec![report("n1", None, 3), report("n2", None, 3)],
        clusters: vec![],
        ds: Some(ds(2, 2, 2)),
        refused: vec![],
    };
    let sc = cluster("fast", 10, &[("tier", "storage")]);
    let o = w.run(&sc);
    assert_eq!(get(&o, cc::READY).status, "True");
    assert_eq!(get(&o, cc::PROGRESSING).reason, reasons::ROLLOUT_COMPLETE);
    assert_eq!(get(&o, cc::DEGRADED).status, "False");
    let reasons: Vec<_> = o.transitions.iter().map(|t| t.reason.as_str()).collect();
    assert_eq!(reasons, [reasons::ROLLOUT_COMPLETE, reasons::READY]);

    // Steady state: feeding the written status back gives the same status, no events.
    let mut written = sc.clone();
    written.status = Some(o.status.clone());
    let again = w.run(&written);
    assert!(unchanged(written.status.as_ref(), &again.status));
    assert!(again.transitions.is_empty());
}

#[test]
fn progress_reasons_in_order() {
    let sc = cluster("fast", 10, &[("tier", "storage")]);
    let mut w = World {
        nodes: three_nodes(),
        reports: vec![],
        clusters: vec![],
        ds: None,
        refused: vec![],
    };
    assert_eq!(
        get(&w.run(&sc), cc::PROGRESSING).reason,
        reasons::CREATING_AGENTS
    );
    w.ds = Some(ds(2, 1, 1));
    let p = w.run(&sc);
    let c = get(&p, cc::PROGRESSING);
    assert_eq!(c.reason, reasons::ROLLING_OUT);
    assert!(c.message.contains("1 of 2 pods updated"), "{}", c.message);
    w.ds = Some(ds(2, 2, 2));
    w.reports = vec![report("n1", None, 3)];
    let p = w.run(&sc);
    let c = get(&p, cc::PROGRESSING);
    assert_eq!(c.reason, reasons::WAITING_FOR_REPORTS);
    assert!(c.message.contains("n2"));
    let r = get(&p, cc::READY);
    assert!(r.message.contains("no report from: n2"), "{}", r.message);
    // Nothing selected.
    let none = cluster("none", 10, &[("tier", "nothing")]);
    let o = w.run(&none);
    assert_eq!(get(&o, cc::READY).reason, reasons::NO_NODES_SELECTED);
    assert!(get(&o, cc::READY).message.contains("spec.nodeSelector"));
    assert_eq!(o.status.desired, 0);
}

#[test]
fn later_cluster_on_the_same_nodes_is_in_conflict() {
    let old = cluster("old", 10, &[("tier", "storage")]);
    let new = cluster("new", 20, &[]);
    let w = World {
        nodes: three_nodes(),
        reports: vec![],
        clusters: vec![old.clone(), new.clone()],
        ds: Some(ds(3, 3, 3)),
        refused: vec![],
    };
    let o = w.run(&new);
    let d = get(&o, cc::DEGRADED);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", reasons::NODE_CONFLICT)
    );
    assert!(
        d.message
            .contains("n1, n2 also selected by the older StorageCluster storage/old"),
        "{}",
        d.message
    );
    assert_eq!(
        get(&w.run(&old), cc::DEGRADED).status,
        "False",
        "the older one keeps its nodes"
    );
    // The shared nodes are not the later cluster's: no agent, not desired.
    assert_eq!(o.status.desired, 1);
    let all: Vec<&Node> = w.nodes.iter().collect();
    assert_eq!(
        excluded_nodes(&new, &w.clusters, &all),
        BTreeSet::from(["n1".to_string(), "n2".to_string()])
    );
    assert!(excluded_nodes(&old, &w.clusters, &all).is_empty());
    // An older cluster being deleted still holds its nodes until it is gone (its
    // agents are restoring them); once gone, the later one gets them.
    let mut w2 = w;
    w2.clusters[0].metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    assert_eq!(get(&w2.run(&new), cc::DEGRADED).reason, "NodeConflict");
    w2.clusters.remove(0);
    let o = w2.run(&new);
    assert_eq!(get(&o, cc::DEGRADED).status, "False");
    assert_eq!(o.status.desired, 3);
}

#[test]
fn refused_spec_is_degraded_naming_each_field() {
    let sc = cluster("bad", 10, &[]);
    let w = World {
        nodes: three_nodes(),
        reports: vec![],
        clusters: vec![],
        ds: None,
        refused: vec![
            Violation {
                field: "spec.readService.dataDirs[1].hostPath".into(),
                message: "\"/etc/x\" is not allowed".into(),
            },
            Violation {
                field: "spec.seccomp.type".into(),
                message: "Unconfined is not allowed".into(),
            },
        ],
    };
    let o = w.run(&sc);
    let d = get(&o, cc::DEGRADED);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "SpecRefused")
    );
    assert!(
        d.message
            .contains("spec.readService.dataDirs[1].hostPath: \"/etc/x\"")
            && d.message.contains("spec.seccomp.type: Unconfined")
            && d.message.contains("renders nothing"),
        "{}",
        d.message
    );
    let p = get(&o, cc::PROGRESSING);
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("False", "SpecRefused")
    );
}

#[test]
fn transition_time_kept_while_status_holds() {
    let w = World {
        nodes: three_nodes(),
        reports: vec![report("n1", None, 3)],
        clusters: vec![],
        ds: Some(ds(2, 2, 2)),
        refused: vec![],
    };
    let mut sc = cluster("fast", 10, &[("tier", "storage")]);
    let first = w.run(&sc);
    sc.status = Some(first.status.clone());
    let mut later = w.reports.clone();
    later.push(report("n2", Some(("ENOSYS", 38)), 3));
    let w2 = World {
        reports: later,
        ..w
    };
    let second = w2.run(&sc);
    // Ready stayed False, its reason/message changed: transition time kept.
    assert_eq!(
        get(&first, cc::READY).last_transition_time,
        get(&second, cc::READY).last_transition_time
    );
    assert_ne!(
        get(&first, cc::READY).message,
        get(&second, cc::READY).message
    );
    assert!(!unchanged(sc.status.as_ref(), &second.status));
}

#[test]
fn unsupported_list_is_sorted_and_bounded_counts_complete() {
    let n = MAX_UNSUPPORTED_LISTED + 7;
    let nodes: Vec<Node> = (0..n)
        .map(|i| node(&format!("n{i:03}"), &[], &[]))
        .collect();
    let reports: Vec<StorageNode> = (0..n)
        .rev()
        .map(|i| report(&format!("n{i:03}"), Some(("ENOSYS", 38)), 3))
        .collect();
    let w = World {
        nodes,
        reports,
        clusters: vec![],
        ds: Some(ds(n as i32, n as i32, n as i32)),
        refused: vec![],
    };
    let o = w.run(&cluster("all", 1, &[]));
    assert_eq!(o.status.io_uring_unsupported as usize, n);
    assert_eq!(o.status.unsupported_nodes.len(), MAX_UNSUPPORTED_LISTED);
    let names: Vec<_> = o
        .status
        .unsupported_nodes
        .iter()
        .map(|u| u.name.clone())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names[0], "n000");
    let ready = get(&o, cc::READY);
    assert!(ready.message.contains("and 52 more"), "{}", ready.message);
}

#[test]
fn a_report_without_verdict_is_pending_not_failed() {
    let mut bare = report("n2", None, 3);
    bare.status = None;
    let mut untuned = report("n1", None, 3);
    let c = &mut untuned.status.as_mut().unwrap().conditions[0];
    c.status = "False".into();
    c.reason = "ReadOnlyProcSys".into();
    let w = World {
        nodes: three_nodes(),
        reports: vec![bare, untuned],
        clusters: vec![],
        ds: Some(ds(2, 2, 2)),
        refused: vec![],
    };
    let o = w.run(&cluster("fast", 10, &[("tier", "storage")]));
    assert_eq!(o.status.reporting, 2);
    assert_eq!(o.status.tuned, 0);
    let d = get(&o, cc::DEGRADED);
    assert_eq!(d.reason, reasons::TUNING_FAILED);
    assert!(
        d.message.contains("on 1 nodes: n1 (ReadOnlyProcSys: m)"),
        "{}",
        d.message
    );
}

/// `sn` with data dir `name` at `host` unusable for `reason` (and so not Ready).
fn dir_unavailable(mut sn: StorageNode, name: &str, host: &str, reason: &str) -> StorageNode {
    let st = sn.status.as_mut().unwrap();
    st.data_dirs.push(DataDirReport {
        name: name.into(),
        host_path: host.into(),
        available: false,
        reason: Some(reason.into()),
        message: Some(format!("{host} does not exist")),
    });
    for c in &mut st.conditions {
        if c.type_ == nc::READY {
            c.status = "False".into();
            c.reason = reasons::DATA_DIR_UNAVAILABLE.into();
        }
    }
    sn
}

fn with_dirs(mut sc: StorageCluster, dirs: &[(&str, &str)]) -> StorageCluster {
    sc.spec.read_service.data_dirs = dirs
        .iter()
        .map(|(n, h)| ringmaster_api::DataDir {
            name: n.to_string(),
            host_path: h.to_string(),
        })
        .collect();
    sc
}

/// The three selected nodes: n1 and n2 report every data dir available, n3 as given.
fn n1_n2_fine_and_n3(n3: StorageNode) -> World {
    World {
        nodes: three_selected(),
        reports: vec![report("n1", None, 3), report("n2", None, 3), n3],
        clusters: vec![],
        ds: Some(ds(3, 3, 3)),
        refused: vec![],
    }
}

fn three_selected() -> Vec<Node> {
    vec![
        node("n1", &[("tier", "storage")], &[]),
        node("n2", &[("tier", "storage")], &[]),
        node("n3", &[("tier", "storage")], &[]),
    ]
}

#[test]
fn one_node_missing_one_data_dir_degrades_naming_the_field() {
    let sc = with_dirs(
        cluster("fast", 10, &[("tier", "storage")]),
        &[("d0", "/storage/data0"), ("d1", "/storage/data1")],
    );
    let w = n1_n2_fine_and_n3(dir_unavailable(
        report("n3", None, 3),
        "d1",
        "/storage/data1",
        "NotFound",
    ));
    let o = w.run(&sc);
    let d = get(&o, cc::DEGRADED);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", reasons::DATA_DIR_UNAVAILABLE)
    );
    assert_eq!(
        d.message,
        "spec.readService.dataDirs[1].hostPath \"/storage/data1\" is missing on 1 of 3 nodes: n3; \
         create the directory on those nodes or narrow spec.nodeSelector"
    );
    let r = get(&o, cc::READY);
    assert!(
        r.message
            .contains("not ready: n3 (spec.readService.dataDirs[1].hostPath missing)"),
        "{}",
        r.message
    );
    // The Degrade event fires once, with the same message.
    let ev: Vec<_> = o
        .transitions
        .iter()
        .filter(|t| t.reason == reasons::DATA_DIR_UNAVAILABLE)
        .collect();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].warning && ev[0].note == d.message);
    let mut written = sc.clone();
    written.status = Some(o.status.clone());
    assert!(w.run(&written).transitions.is_empty(), "once, not per pass");
    // The dir created: Degraded clears, a Recovered event.
    let healed = World {
        reports: vec![
            report("n1", None, 3),
            report("n2", None, 3),
            report("n3", None, 3),
        ],
        ..w
    };
    let o2 = healed.run(&written);
    assert_eq!(get(&o2, cc::DEGRADED).status, "False");
    assert!(o2
        .transitions
        .iter()
        .any(|t| t.reason == reasons::RECOVERED));
}

#[test]
fn two_data_dirs_missing_on_different_nodes_are_grouped_by_field() {
    let sc = with_dirs(
        cluster("fast", 10, &[("tier", "storage")]),
        &[("d0", "/storage/data0"), ("d1", "/storage/data1")],
    );
    let w = World {
        nodes: three_selected(),
        reports: vec![
            dir_unavailable(report("n1", None, 3), "d0", "/storage/data0", "NotFound"),
            dir_unavailable(
                report("n2", None, 3),
                "d1",
                "/storage/data1",
                "NotADirectory",
            ),
            dir_unavailable(report("n3", None, 3), "d0", "/storage/data0", "NotFound"),
        ],
        clusters: vec![],
        ds: Some(ds(3, 3, 3)),
        refused: vec![],
    };
    let d = get(&w.run(&sc), cc::DEGRADED).clone();
    assert_eq!(d.reason, reasons::DATA_DIR_UNAVAILABLE);
    assert!(
        d.message.starts_with(
            "spec.readService.dataDirs[0].hostPath \"/storage/data0\" is missing on 2 of 3 nodes: n1, n3; \
             spec.readService.dataDirs[1].hostPath \"/storage/data1\" is not a directory on 1 of 3 nodes: n2; "
        ),
        "{}",
        d.message
    );
    assert!(
        d.message.contains("create or fix the directories"),
        "{}",
        d.message
    );
    // A node conflict still comes first; IoUringUnsupported under Required too.
    let mut req = sc.clone();
    req.spec.aio.io_uring = IoUringPolicy::Required;
    let mut w2 = w;
    w2.reports.push(report("n9", None, 3));
    w2.nodes.push(node("n9", &[("tier", "storage")], &[]));
    let last = w2.reports.len() - 1;
    w2.reports[last] = report("n9", Some(("ENOSYS", 38)), 3);
    assert_eq!(
        get(&w2.run(&req), cc::DEGRADED).reason,
        reasons::IO_URING_UNSUPPORTED
    );
}

#[test]
fn data_dir_removed_from_the_spec_falls_back_to_its_name() {
    // The node still reports d1, which the current spec no longer has.
    let sc = with_dirs(
        cluster("fast", 10, &[("tier", "storage")]),
        &[("d0", "/storage/data0")],
    );
    let w = n1_n2_fine_and_n3(dir_unavailable(
        report("n3", None, 2),
        "d1",
        "/storage/data1",
        "NotFound",
    ));
    let o = w.run(&sc);
    let d = get(&o, cc::DEGRADED);
    assert!(
        d.message.starts_with(
            "dataDir d1 (no longer in spec.readService.dataDirs) \"/storage/data1\" is missing on 1 of 3 nodes: n3"
        ),
        "{}",
        d.message
    );
    assert!(!d.message.contains("dataDirs["), "{}", d.message);
}

#[test]
fn restored_reads_the_condition() {
    let mut sn = report("n1", None, 1);
    assert!(!restored(&sn));
    sn.status
        .as_mut()
        .unwrap()
        .conditions
        .push(cond(nc::RESTORED, true));
    assert!(restored(&sn));
}
