//! Pure aggregation: Nodes + StorageNodes + the agent DaemonSet → one StorageCluster
//! status with conditions a person can act on, and the transitions worth an Event.
//! No I/O; the controller feeds it from its watch caches.

use ringmaster_api::reasons;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use ringmaster_api::limits::Violation;
use ringmaster_api::{
    cluster_conditions as cc, data_dir_reasons, node_conditions as nc, DataDirReport,
    IoUringPolicy, StorageCluster, StorageClusterStatus, StorageNode, SysctlMode, UnsupportedNode,
    MAX_UNSUPPORTED_LISTED,
};

use crate::render;
use crate::staleness::{self, Stale};

/// How many node names a condition message lists before "and N more".
const NAMES_IN_MESSAGE: usize = 5;

/// Does `toleration` tolerate `taint` (the scheduler's rule)?
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref() {
        if !e.is_empty() && e != taint.effect {
            return false;
        }
    }
    match t.operator.as_deref() {
        Some("Exists") => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Is `node` one the cluster's agent DaemonSet runs on? The nodeSelector matches and
/// every NoSchedule/NoExecute taint is tolerated (taints under `node.kubernetes.io/` are
/// tolerated by every DaemonSet pod automatically). This is the DaemonSet's own
/// "desired" rule, so `status.desired` equals its `desiredNumberScheduled`.
pub fn selects(sc: &StorageCluster, node: &Node) -> bool {
    if !matches_node_selector(sc, node) {
        return false;
    }
    let tolerations = render::tolerations(sc);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// The node's labels match `spec.nodeSelector`. A node that stops matching loses its agent
/// pod (the DaemonSet controller deletes it); a new NoSchedule taint does not evict one.
pub fn matches_node_selector(sc: &StorageCluster, node: &Node) -> bool {
    let labels = node.labels();
    sc.spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// Nodes this cluster's agent left its mark on (the cluster annotation, or a StorageNode
/// in `reported`) whose labels no longer match `spec.nodeSelector`: their agent pod is
/// gone and SIGTERM restores nothing, so the operator must remove what it left there.
pub fn departed<'a>(
    sc: &StorageCluster,
    cluster_key: &str,
    nodes: impl IntoIterator<Item = &'a Node>,
    reported: &BTreeSet<String>,
) -> Vec<String> {
    nodes
        .into_iter()
        .filter(|n| !matches_node_selector(sc, n))
        .filter(|n| {
            n.annotations()
                .get(ringmaster_api::keys::CLUSTER_ANNOTATION)
                == Some(&cluster_key.to_string())
                || reported.contains(&n.name_any())
        })
        .map(|n| n.name_any())
        .collect()
}

/// Names of the nodes a cluster selects.
pub fn selection<'a>(
    sc: &StorageCluster,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> BTreeSet<String> {
    nodes
        .into_iter()
        .filter(|n| selects(sc, n))
        .map(|n| n.name_any())
        .collect()
}

/// Order of precedence between clusters that select the same node: the older one keeps
/// it (creation time, then namespace/name so the order is total).
fn precedence(sc: &StorageCluster) -> (Option<Timestamp>, String, String) {
    (
        sc.creation_timestamp().map(|t| t.0),
        sc.namespace().unwrap_or_default(),
        sc.name_any(),
    )
}

/// Nodes this cluster shares with older clusters, by the older cluster's `ns/name`. An
/// older cluster being deleted still holds its nodes until it is gone: its agents are
/// restoring them, and a second agent must not start there meanwhile.
pub fn conflicts<'a>(
    sc: &StorageCluster,
    selected: &BTreeSet<String>,
    others: impl IntoIterator<Item = &'a StorageCluster>,
    nodes: &[&Node],
) -> BTreeMap<String, BTreeSet<String>> {
    let me = precedence(sc);
    let mut out = BTreeMap::new();
    for o in others {
        if o.uid() == sc.uid() || precedence(o) >= me {
            continue;
        }
        let shared: BTreeSet<String> = nodes
            .iter()
            .filter(|n| selected.contains(&n.name_any()) && selects(o, n))
            .map(|n| n.name_any())
            .collect();
        if !shared.is_empty() {
            out.insert(
                format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                shared,
            );
        }
    }
    out
}

/// Nodes this cluster's DaemonSet must stay off: those an older cluster selects. Two
/// agents on one node would share its state dir, aio.toml, the sysctl and its sysctl.d
/// file, and deleting the later cluster would restore or remove what the first relies on.
pub fn excluded_nodes<'a>(
    sc: &StorageCluster,
    others: impl IntoIterator<Item = &'a StorageCluster>,
    nodes: &[&Node],
) -> BTreeSet<String> {
    let selected = selection(sc, nodes.iter().copied());
    conflicts(sc, &selected, others, nodes)
        .into_values()
        .flatten()
        .collect()
}

fn condition_true(sn: &StorageNode, type_: &str) -> Option<bool> {
    sn.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

fn condition_message(sn: &StorageNode, type_: &str) -> Option<String> {
    sn.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| format!("{}: {}", c.reason, c.message))
}

/// Is this StorageNode's agent done with cleanup (`Restored=True`)?
pub fn restored(sn: &StorageNode) -> bool {
    condition_true(sn, nc::RESTORED) == Some(true)
}

/// `a, b, c and 4 more`
pub fn name_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let all: Vec<&str> = names.into_iter().collect();
    let mut s = all
        .iter()
        .take(NAMES_IN_MESSAGE)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > NAMES_IN_MESSAGE {
        s.push_str(&format!(" and {} more", all.len() - NAMES_IN_MESSAGE));
    }
    s
}

/// Data dirs the agents report unusable, grouped by spec field: a person fixes a field
/// (or the nodes it names), not one node at a time.
#[derive(Default)]
struct DataDirProblems {
    /// (index in the current spec or `usize::MAX`, name, host path, reason) → nodes.
    by_field: BTreeMap<(usize, String, String, String), Vec<String>>,
}

impl DataDirProblems {
    fn add(&mut self, sc: &StorageCluster, node: &str, d: &DataDirReport) {
        let index = sc
            .spec
            .read_service
            .data_dirs
            .iter()
            .position(|s| s.name == d.name)
            .unwrap_or(usize::MAX);
        let reason = d.reason.clone().unwrap_or_else(|| "Unavailable".into());
        self.by_field
            .entry((index, d.name.clone(), d.host_path.clone(), reason))
            .or_default()
            .push(node.to_string());
    }

    fn is_empty(&self) -> bool {
        self.by_field.is_empty()
    }

    /// `spec.readService.dataDirs[1].hostPath`, or the name once it left the spec.
    fn field(index: usize, name: &str) -> String {
        ringmaster_api::data_dir_field((index != usize::MAX).then_some(index), name)
    }

    fn what(reason: &str) -> String {
        match reason {
            data_dir_reasons::NOT_FOUND => "missing".into(),
            data_dir_reasons::NOT_A_DIRECTORY => "not a directory".into(),
            data_dir_reasons::PERMISSION_DENIED => "not readable by the reader".into(),
            other => format!("unusable ({other})"),
        }
    }

    /// `n3 (spec.readService.dataDirs[1].hostPath missing)` for the Ready message.
    fn on_node(&self, node: &str) -> Option<String> {
        let parts: Vec<String> = self
            .by_field
            .iter()
            .filter(|(_, nodes)| nodes.iter().any(|n| n == node))
            .map(|((i, name, _, reason), _)| {
                format!("{} {}", Self::field(*i, name), Self::what(reason))
            })
            .collect();
        (!parts.is_empty()).then(|| format!("{node} ({})", parts.join(", ")))
    }

    fn message(&self, desired: i32) -> String {
        let parts: Vec<String> = self
            .by_field
            .iter()
            .map(|((i, name, host, reason), nodes)| {
                format!(
                    "{} {host:?} is {} on {} of {desired} nodes: {}",
                    Self::field(*i, name),
                    Self::what(reason),
                    nodes.len(),
                    name_list(nodes.iter().map(String::as_str))
                )
            })
            .collect();
        let all_missing = self
            .by_field
            .keys()
            .all(|k| k.3 == data_dir_reasons::NOT_FOUND);
        let fix = if all_missing {
            "create the directory on those nodes or narrow spec.nodeSelector"
        } else {
            "create or fix the directories on those nodes (Ringmaster never creates host directories; kubectl get stn <node> -o yaml shows why) or narrow spec.nodeSelector"
        };
        format!("{}; {fix}", parts.join("; "))
    }
}

/// Everything the aggregation reads.
pub struct Inputs<'a> {
    pub cluster: &'a StorageCluster,
    /// Every Node the operator sees.
    pub nodes: &'a [&'a Node],
    /// This cluster's StorageNodes, by node name.
    pub storage_nodes: &'a HashMap<String, &'a StorageNode>,
    /// Every StorageCluster (this one included; it is skipped).
    pub clusters: &'a [&'a StorageCluster],
    /// The live agent DaemonSet, if it exists yet.
    pub daemon_set: Option<&'a DaemonSet>,
    /// How the spec breaks the static limits or the admin's settings (the operator then
    /// rendered nothing).
    pub refused: &'a [Violation],
    pub now: Timestamp,
}

/// Something worth an Event on the StorageCluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    /// What happened (`IoUringUnsupported`, `RolloutComplete`, `NodeConflict`, ...).
    pub reason: String,
    /// Kind of transition. Events with the same (type, action, reason, node) within a few
    /// minutes are folded into one series by the recorder, so distinct transitions get
    /// distinct actions.
    pub action: &'static str,
    /// The Node it is about, if any (the Event's `related` object).
    pub node: Option<String>,
    pub note: String,
}

/// The aggregation's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: StorageClusterStatus,
    /// Selected node names, excluded ones included (the controller remembers them to map
    /// Node events).
    pub selected: BTreeSet<String>,
    /// Clusters sharing nodes with this one (older ones only).
    pub conflicts: BTreeMap<String, BTreeSet<String>>,
    pub transitions: Vec<Transition>,
    /// Selected nodes whose report is too old to trust, and why.
    pub stale: Vec<(String, Stale)>,
    /// When the first fresh report would turn stale (look again then).
    pub recheck_after: Option<std::time::Duration>,
}

/// A condition that keeps its `lastTransitionTime` while its status stays the same.
pub fn condition(
    prev: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Aggregate. Pure: the same inputs give the same status (times come from `prev` or `now`).
pub fn aggregate(i: &Inputs) -> Outcome {
    let sc = i.cluster;
    let generation = sc.metadata.generation;
    let prev = sc.status.clone().unwrap_or_default();
    let selected = selection(sc, i.nodes.iter().copied());
    let conflicts = conflicts(sc, &selected, i.clusters.iter().copied(), i.nodes);
    // Nodes an older cluster holds get no agent of ours (the DaemonSet's node affinity
    // excludes them), so they are not ours to count.
    let served: BTreeSet<String> = selected
        .iter()
        .filter(|n| !conflicts.values().any(|c| c.contains(*n)))
        .cloned()
        .collect();

    let mut st = StorageClusterStatus {
        observed_generation: generation,
        config_hash: Some(sc.spec.config_hash()),
        desired: served.len() as i32,
        ..Default::default()
    };
    let mut not_reporting = Vec::new();
    let mut not_ready = Vec::new();
    let mut stale = Vec::new();
    let mut untuned = Vec::new();
    let mut unsupported = Vec::new();
    let mut dirs = DataDirProblems::default();
    let mut stale_reports: Vec<(String, Stale)> = Vec::new();
    let mut fresh: Vec<&StorageNode> = Vec::new();
    for name in &served {
        let Some(sn) = i.storage_nodes.get(name) else {
            not_reporting.push(name.as_str());
            continue;
        };
        st.reporting += 1;
        // A report nobody vouches for any more counts as unknown, not as its content.
        let node = i.nodes.iter().copied().find(|n| n.name_any() == *name);
        if let Some(why) = staleness::staleness(sn, node, i.now) {
            st.stale += 1;
            stale_reports.push((name.clone(), why));
            continue;
        }
        fresh.push(*sn);
        let status = sn.status.clone().unwrap_or_default();
        // Tuned=False is a failure; no verdict yet (a report still being written) is not.
        match condition_true(sn, nc::TUNED).or(status.aio.as_ref().map(|a| a.tuned)) {
            Some(true) => st.tuned += 1,
            Some(false) => untuned.push((name.as_str(), condition_message(sn, nc::TUNED))),
            None => {}
        }
        match &status.io_uring {
            Some(r) if r.supported => st.io_uring_supported += 1,
            Some(r) => {
                st.io_uring_unsupported += 1;
                unsupported.push(UnsupportedNode {
                    name: name.clone(),
                    reason: r.reason.clone(),
                    errno: r.errno,
                    kernel: status.kernel.clone(),
                });
            }
            None => {}
        }
        for d in status.data_dirs.iter().filter(|d| !d.available) {
            dirs.add(sc, name, d);
        }
        if condition_true(sn, nc::READY) == Some(true) {
            st.ready += 1;
        } else {
            not_ready.push(name.as_str());
        }
        if generation.is_some() && status.applied_generation == generation {
            st.up_to_date += 1;
        } else {
            stale.push(name.as_str());
        }
    }
    unsupported.sort();
    let unsupported_all = unsupported.clone();
    unsupported.truncate(MAX_UNSUPPORTED_LISTED);
    st.unsupported_nodes = unsupported;

    let policy = sc.spec.aio.io_uring;
    let gen_txt = generation.map_or("?".into(), |g| g.to_string());
    let ns = sc.namespace().unwrap_or_default();
    let ds_name = format!("{}-agent", sc.name_any());

    // Ready: every selected node can run the storage service.
    let ready = if st.desired == 0 {
        condition(
            &prev.conditions,
            cc::READY,
            false,
            reasons::NO_NODES_SELECTED,
            format!(
                "spec.nodeSelector {:?} (with spec.tolerations) selects no node: label the storage nodes or change spec.nodeSelector",
                sc.spec.node_selector
            ),
            generation,
            i.now,
        )
    } else if st.ready == st.desired {
        condition(
            &prev.conditions,
            cc::READY,
            true,
            reasons::ALL_NODES_READY,
            format!("all {} selected nodes are ready", st.desired),
            generation,
            i.now,
        )
    } else {
        let mut why: Vec<String> = Vec::new();
        for n in &not_ready {
            let r = dirs.on_node(n).or_else(|| {
                unsupported_all.iter().find(|u| u.name == *n).map(|u| {
                    format!(
                        "{n} (io_uring {})",
                        u.reason.as_deref().unwrap_or("unsupported")
                    )
                })
            });
            why.push(r.unwrap_or_else(|| n.to_string()));
        }
        let mut msg = format!("{} of {} selected nodes ready", st.ready, st.desired);
        if !why.is_empty() {
            msg.push_str(&format!(
                "; not ready: {} (kubectl get stn <node> -o yaml shows why)",
                name_list(why.iter().map(String::as_str))
            ));
        }
        if !stale_reports.is_empty() {
            let list: Vec<String> = stale_reports
                .iter()
                .map(|(n, why)| format!("{n} ({})", why.describe()))
                .collect();
            msg.push_str(&format!(
                "; report too old to trust from: {}",
                name_list(list.iter().map(String::as_str))
            ));
        }
        if !not_reporting.is_empty() {
            msg.push_str(&format!(
                "; no report from: {} (check the agent pods: kubectl -n {ns} get pods -l {}={} -o wide)",
                name_list(not_reporting.iter().copied()),
                ringmaster_api::keys::LABEL_CLUSTER_NAME,
                sc.name_any()
            ));
        }
        condition(
            &prev.conditions,
            cc::READY,
            false,
            reasons::NODES_NOT_READY,
            msg,
            generation,
            i.now,
        )
    };

    // Progressing: the DaemonSet rollout, then the reports, then the generation.
    let rollout = i.daemon_set.map(|ds| {
        let s = ds.status.clone().unwrap_or_default();
        let observed = s.observed_generation >= ds.metadata.generation;
        let updated = s.updated_number_scheduled.unwrap_or(0);
        let available = s.number_available.unwrap_or(0);
        (observed, s.desired_number_scheduled, updated, available)
    });
    let progressing = match rollout {
        _ if !i.refused.is_empty() => condition(
            &prev.conditions,
            cc::PROGRESSING,
            false,
            reasons::SPEC_REFUSED,
            "nothing rolled out: the spec breaks a limit (see Degraded)".into(),
            generation,
            i.now,
        ),
        _ if st.desired == 0 => condition(
            &prev.conditions,
            cc::PROGRESSING,
            false,
            reasons::NO_NODES_SELECTED,
            "nothing to roll out: no node selected".into(),
            generation,
            i.now,
        ),
        None => condition(
            &prev.conditions,
            cc::PROGRESSING,
            true,
            reasons::CREATING_AGENTS,
            format!("creating the agent DaemonSet {ns}/{ds_name}"),
            generation,
            i.now,
        ),
        Some((observed, want, updated, available))
            if !observed || updated < want || available < want =>
        {
            condition(
                &prev.conditions,
                cc::PROGRESSING,
                true,
                reasons::ROLLING_OUT,
                format!(
                    "agent DaemonSet {ns}/{ds_name}: {updated} of {want} pods updated, {available} available (kubectl -n {ns} rollout status ds/{ds_name})"
                ),
                generation,
                i.now,
            )
        }
        _ if !not_reporting.is_empty() => condition(
            &prev.conditions,
            cc::PROGRESSING,
            true,
            reasons::WAITING_FOR_REPORTS,
            format!(
                "{} of {} selected nodes have no StorageNode yet: {}",
                not_reporting.len(),
                st.desired,
                name_list(not_reporting.iter().copied())
            ),
            generation,
            i.now,
        ),
        _ if !stale.is_empty() => condition(
            &prev.conditions,
            cc::PROGRESSING,
            true,
            reasons::APPLYING_CONFIG,
            format!(
                "{} of {} nodes have not applied generation {gen_txt} yet: {}",
                stale.len(),
                st.reporting,
                name_list(stale.iter().copied())
            ),
            generation,
            i.now,
        ),
        _ => condition(
            &prev.conditions,
            cc::PROGRESSING,
            false,
            reasons::ROLLOUT_COMPLETE,
            format!("all {} nodes run generation {gen_txt}", st.desired),
            generation,
            i.now,
        ),
    };

    // Degraded: something a person must fix.
    let degraded = if !i.refused.is_empty() {
        let parts: Vec<String> = i.refused.iter().map(|v| v.to_string()).collect();
        condition(
            &prev.conditions,
            cc::DEGRADED,
            true,
            reasons::SPEC_REFUSED,
            format!(
                "{}; the operator renders nothing for this StorageCluster until the spec is fixed (an agent DaemonSet rendered earlier is left as it was)",
                parts.join("; ")
            ),
            generation,
            i.now,
        )
    } else if !conflicts.is_empty() {
        let parts: Vec<String> = conflicts
            .iter()
            .map(|(owner, nodes)| {
                format!(
                    "{} also selected by the older StorageCluster {owner} (no agent of this cluster runs there)",
                    name_list(nodes.iter().map(String::as_str))
                )
            })
            .collect();
        condition(
            &prev.conditions,
            cc::DEGRADED,
            true,
            reasons::NODE_CONFLICT,
            format!(
                "{}; a node belongs to one StorageCluster: narrow spec.nodeSelector so they do not overlap",
                parts.join("; ")
            ),
            generation,
            i.now,
        )
    } else if !stale_reports.is_empty() {
        let list: Vec<String> = stale_reports
            .iter()
            .map(|(n, why)| format!("{n} ({})", why.describe()))
            .collect();
        condition(
            &prev.conditions,
            cc::DEGRADED,
            true,
            "ReportsStale",
            format!(
                "{} of {} selected nodes have no current report: {}; their {} and {} labels are removed until their agent reports again: check the agent pods (kubectl -n {ns} get pods -l {}={} -o wide)",
                stale_reports.len(),
                st.desired,
                name_list(list.iter().map(String::as_str)),
                ringmaster_api::keys::LABEL_READY,
                ringmaster_api::keys::LABEL_AIO_TUNED,
                ringmaster_api::keys::LABEL_CLUSTER_NAME,
                sc.name_any()
            ),
            generation,
            i.now,
        )
    } else if policy == IoUringPolicy::Required && !unsupported_all.is_empty() {
        let list: Vec<String> = unsupported_all
            .iter()
            .map(|u| format!("{} ({})", u.name, u.reason.as_deref().unwrap_or("unknown")))
            .collect();
        condition(
            &prev.conditions,
            cc::DEGRADED,
            true,
            reasons::IO_URING_UNSUPPORTED,
            format!(
                "spec.aio.ioUring is Required but io_uring fails on {} of {} nodes: {}; fix the node (see status.unsupportedNodes and kubectl get stn <node> -o yaml) or set spec.aio.ioUring: Preferred to use the pread fallback there",
                unsupported_all.len(),
                st.reporting,
                name_list(list.iter().map(String::as_str))
            ),
            generation,
            i.now,
        )
    } else if !dirs.is_empty() {
        condition(
            &prev.conditions,
            cc::DEGRADED,
            true,
            reasons::DATA_DIR_UNAVAILABLE,
            dirs.message(st.desired),
            generation,
            i.now,
        )
    } else if sc.spec.sysctl.mode == SysctlMode::Enforce
        && !untuned.is_empty()
        && not_reporting.is_empty()
    {
        let list: Vec<String> = untuned
            .iter()
            .map(|(n, m)| match m {
                Some(m) => format!("{n} ({m})"),
                None => n.to_string(),
            })
            .collect();
        condition(
            &prev.conditions,
            cc::DEGRADED,
            true,
            reasons::TUNING_FAILED,
            format!(
                "fs.aio-max-nr is below what spec.aio needs on {} nodes: {}",
                untuned.len(),
                name_list(list.iter().map(String::as_str))
            ),
            generation,
            i.now,
        )
    } else {
        let msg = if st.io_uring_unsupported > 0 {
            format!(
                "no problem to fix; {} nodes use the pread fallback (spec.aio.ioUring is {policy:?})",
                st.io_uring_unsupported
            )
        } else {
            "no problem to fix".into()
        };
        condition(
            &prev.conditions,
            cc::DEGRADED,
            false,
            reasons::AS_EXPECTED,
            msg,
            generation,
            i.now,
        )
    };
    st.conditions = vec![ready, progressing, degraded];

    let transitions = transitions(&prev, &st, policy);
    Outcome {
        status: st,
        selected,
        conflicts,
        transitions,
        stale: stale_reports,
        recheck_after: staleness::next_expiry(fresh, i.now),
    }
}

/// Events for what changed between the previous and the new status.
fn transitions(
    prev: &StorageClusterStatus,
    new: &StorageClusterStatus,
    policy: IoUringPolicy,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let before: BTreeSet<&str> = prev
        .unsupported_nodes
        .iter()
        .map(|u| u.name.as_str())
        .collect();
    // A full previous list may have left a node out: only report names it could hold.
    let prev_full = prev.unsupported_nodes.len() >= MAX_UNSUPPORTED_LISTED;
    let last_prev = prev.unsupported_nodes.last().map(|u| u.name.as_str());
    for u in &new.unsupported_nodes {
        if before.contains(u.name.as_str()) || (prev_full && Some(u.name.as_str()) > last_prev) {
            continue;
        }
        let consequence = match policy {
            IoUringPolicy::Required => "the node cannot run the storage service (policy Required)",
            IoUringPolicy::Preferred => "the read workers there use the pread fallback",
            IoUringPolicy::Disabled => "policy Disabled: io_uring is not used",
        };
        out.push(Transition {
            warning: true,
            reason: reasons::IO_URING_UNSUPPORTED.into(),
            action: "ProbeNode",
            node: Some(u.name.clone()),
            note: format!(
                "node {}: io_uring unsupported ({}{}) on kernel {}; {consequence}",
                u.name,
                u.reason.as_deref().unwrap_or("unknown"),
                u.errno.map(|e| format!(", errno {e}")).unwrap_or_default(),
                u.kernel.as_deref().unwrap_or("unknown"),
            ),
        });
    }
    let p = |s: &StorageClusterStatus, t: &str| find(&s.conditions, t).cloned();
    if let Some(np) = p(new, cc::PROGRESSING) {
        let was = p(prev, cc::PROGRESSING);
        if np.reason == reasons::ROLLOUT_COMPLETE
            && was
                .as_ref()
                .is_none_or(|w| w.reason != reasons::ROLLOUT_COMPLETE)
        {
            out.push(Transition {
                warning: false,
                reason: reasons::ROLLOUT_COMPLETE.into(),
                action: "Rollout",
                node: None,
                note: np.message.clone(),
            });
        }
    }
    if let Some(nd) = p(new, cc::DEGRADED) {
        let was = p(prev, cc::DEGRADED);
        let was_reason = was.as_ref().map(|w| (w.status.as_str(), w.reason.as_str()));
        if nd.status == "True" && was_reason != Some(("True", nd.reason.as_str())) {
            out.push(Transition {
                warning: true,
                reason: nd.reason.clone(),
                action: "Degrade",
                node: None,
                note: nd.message.clone(),
            });
        } else if nd.status == "False" && was.is_some_and(|w| w.status == "True") {
            out.push(Transition {
                warning: false,
                reason: reasons::RECOVERED.into(),
                action: "Recover",
                node: None,
                note: format!("no longer degraded: {}", nd.message),
            });
        }
    }
    if let Some(nr) = p(new, cc::READY) {
        let was = p(prev, cc::READY);
        if nr.status == "True" && was.is_none_or(|w| w.status != "True") {
            out.push(Transition {
                warning: false,
                reason: reasons::READY.into(),
                action: "Ready",
                node: None,
                note: nr.message.clone(),
            });
        }
    }
    out
}

/// True when two statuses say the same (ignoring nothing: times are carried over by
/// [`condition`], so an unchanged world compares equal and nothing is written).
pub fn unchanged(prev: Option<&StorageClusterStatus>, new: &StorageClusterStatus) -> bool {
    prev == Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use k8s_openapi::api::core::v1::NodeSpec;
    use ringmaster_api::{
        keys, AioReport, IoUringReport, StorageClusterSpec, StorageNodeSpec, StorageNodeStatus,
    };

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|(k, e)| Taint {
                        key: k.to_string(),
                        effect: e.to_string(),
                        value: Some("fake".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    fn cluster(name: &str, created: i64, selector: &[(&str, &str)]) -> StorageCluster {
        let mut sc = StorageCluster::new(name, StorageClusterSpec::default());
        sc.metadata.namespace = Some("storage".into());
        sc.metadata.uid = Some(format!("uid-{name}"));
        sc.metadata.generation = Some(3);
        sc.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        sc.spec.node_selector = selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        sc
    }

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

    fn three_nodes() -> Vec<Node> {
        let fake = [("kwok.x-k8s.io/node", "NoSchedule")];
        vec![
            node("n1", &[("tier", "storage")], &[]),
            node("n2", &[("tier", "storage")], &[]),
            node("n3", &[("tier", "storage")], &fake),
            node("other", &[("tier", "web")], &[]),
        ]
    }

    #[test]
    fn departed_nodes_are_ours_and_off_the_node_selector_only() {
        let sc = cluster("fast", 10, &[("tier", "storage")]);
        let key = "storage/fast";
        let tagged = |mut n: Node, cluster: &str| {
            n.metadata.annotations =
                Some([(keys::CLUSTER_ANNOTATION.to_string(), cluster.to_string())].into());
            n
        };
        let nodes = [
            // Still selected (a NoSchedule taint does not evict a running agent pod).
            tagged(
                node("in", &[("tier", "storage")], &[("x", "NoSchedule")]),
                key,
            ),
            // Left the selector, tagged by us: departed.
            tagged(node("left", &[("tier", "web")], &[]), key),
            // Left, tagged by another cluster, no report of ours: not ours to clean.
            tagged(node("other", &[], &[]), "storage/slow"),
            // Left, untagged, but it has our StorageNode: departed.
            node("reported", &[], &[]),
            // Never ours.
            node("never", &[], &[]),
        ];
        let reported = BTreeSet::from(["reported".to_string(), "in".to_string()]);
        assert_eq!(
            departed(&sc, key, &nodes, &reported),
            vec!["left".to_string(), "reported".to_string()]
        );
        // An empty nodeSelector selects every node: nothing departs.
        let all = cluster("fast", 10, &[]);
        assert!(departed(&all, key, &nodes, &reported).is_empty());
    }

    #[test]
    fn selection_follows_selector_and_tolerations_like_the_daemonset() {
        let nodes = three_nodes();
        let mut sc = cluster("fast", 10, &[("tier", "storage")]);
        let sel = selection(&sc, &nodes);
        assert_eq!(
            sel,
            BTreeSet::from(["n1".into(), "n2".into()]),
            "n3 taint not tolerated"
        );
        sc.spec.tolerations.push(Toleration {
            key: Some("kwok.x-k8s.io/node".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
        assert_eq!(selection(&sc, &nodes).len(), 3);
        // Our own taint and node.kubernetes.io/* taints never unselect a node.
        let tainted = node(
            "n4",
            &[("tier", "storage")],
            &[
                (keys::TAINT_IO_URING_UNSUPPORTED, "NoSchedule"),
                ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ],
        );
        assert!(selects(&sc, &tainted));
        // PreferNoSchedule does not keep a DaemonSet pod away.
        assert!(selects(
            &sc,
            &node("n5", &[("tier", "storage")], &[("x", "PreferNoSchedule")])
        ));
        // Empty selector: every node.
        let all = cluster("all", 10, &[]);
        assert_eq!(selection(&all, &nodes).len(), 3);
    }

    #[test]
    fn toleration_matching_rules() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = |key: Option<&str>, op: Option<&str>, val: Option<&str>, eff: Option<&str>| {
            Toleration {
                key: key.map(Into::into),
                operator: op.map(Into::into),
                value: val.map(Into::into),
                effect: eff.map(Into::into),
                ..Default::default()
            }
        };
        assert!(tolerates(&t(None, Some("Exists"), None, None), &taint));
        assert!(tolerates(&t(Some("k"), Some("Exists"), None, None), &taint));
        assert!(tolerates(
            &t(Some("k"), Some("Equal"), Some("v"), Some("NoSchedule")),
            &taint
        ));
        assert!(tolerates(&t(Some("k"), None, Some("v"), None), &taint));
        assert!(!tolerates(&t(Some("k"), None, Some("w"), None), &taint));
        assert!(!tolerates(
            &t(Some("k"), Some("Exists"), None, Some("NoExecute")),
            &taint
        ));
        assert!(!tolerates(
            &t(Some("j"), Some("Exists"), None, None),
            &taint
        ));
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
        let w = World {
            nodes: three_selected(),
            reports: vec![
                report("n1", None, 3),
                report("n2", None, 3),
                dir_unavailable(report("n3", None, 3), "d1", "/storage/data1", "NotFound"),
            ],
            clusters: vec![],
            ds: Some(ds(3, 3, 3)),
            refused: vec![],
        };
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
        let w = World {
            nodes: three_selected(),
            reports: vec![
                report("n1", None, 3),
                report("n2", None, 3),
                dir_unavailable(report("n3", None, 2), "d1", "/storage/data1", "NotFound"),
            ],
            clusters: vec![],
            ds: Some(ds(3, 3, 3)),
            refused: vec![],
        };
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
}
