//! What the operator observes of one cluster's fleet: the counts of the status and the nodes
//! behind each problem, tallied once from the reports; one method per condition. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use ringmaster_api::{
    cluster_conditions as cc, keys, node_conditions as nc, reasons, IoUringPolicy,
    StorageClusterStatus, StorageNode, SysctlMode, UnsupportedNode, MAX_UNSUPPORTED_LISTED,
};

use super::data_dirs::DataDirProblems;
use super::{condition, condition_message, condition_true, name_list, Inputs};
use crate::staleness::{self, Stale};

/// A condition's status, reason and message before it becomes a [`Condition`].
type Verdict = (bool, &'static str, String);

pub(super) struct Fleet<'a> {
    i: &'a Inputs<'a>,
    /// Every Node by name: one report per node looks up its node (a scan each was
    /// quadratic, half a second per reconcile at 5,000 nodes).
    nodes: HashMap<&'a str, &'a Node>,
    /// Older clusters holding some of the selected nodes.
    conflicts: &'a BTreeMap<String, BTreeSet<String>>,
    /// The status as last written (conditions keep their transition times from it).
    pub prev: StorageClusterStatus,
    /// The new status without its conditions: generation, config hash, counts, the bounded
    /// list of unsupported nodes.
    pub counts: StorageClusterStatus,
    /// Served nodes with no StorageNode yet.
    not_reporting: Vec<String>,
    /// Nodes with a fresh report that is not `Ready=True`.
    not_ready: Vec<String>,
    /// Nodes with a fresh report of an older generation.
    behind: Vec<String>,
    /// Nodes that report `Tuned=False`, with that condition's `reason: message`.
    untuned: Vec<(String, Option<String>)>,
    /// Every node where io_uring fails, sorted (`counts` lists only the first ones).
    unsupported: Vec<UnsupportedNode>,
    dirs: DataDirProblems,
    /// Nodes whose report is too old to trust, and why.
    pub stale_reports: Vec<(String, Stale)>,
    /// The reports still trusted (the next to expire sets the recheck).
    pub fresh: Vec<&'a StorageNode>,
}

impl<'a> Fleet<'a> {
    /// Tally the reports of the served nodes: the selected ones no older cluster holds (they
    /// get no agent of ours: the DaemonSet's node affinity excludes them).
    pub fn observe(
        i: &'a Inputs<'a>,
        selected: &BTreeSet<String>,
        conflicts: &'a BTreeMap<String, BTreeSet<String>>,
    ) -> Self {
        let sc = i.cluster;
        let generation = sc.metadata.generation;
        let served: BTreeSet<&String> = selected
            .iter()
            .filter(|n| !conflicts.values().any(|c| c.contains(*n)))
            .collect();
        let mut f = Fleet {
            i,
            nodes: i
                .nodes
                .iter()
                .filter_map(|n| Some((n.metadata.name.as_deref()?, *n)))
                .collect(),
            conflicts,
            prev: sc.status.clone().unwrap_or_default(),
            counts: StorageClusterStatus {
                observed_generation: generation,
                config_hash: Some(sc.spec.config_hash()),
                desired: served.len() as i32,
                ..Default::default()
            },
            not_reporting: Vec::new(),
            not_ready: Vec::new(),
            behind: Vec::new(),
            untuned: Vec::new(),
            unsupported: Vec::new(),
            dirs: DataDirProblems::default(),
            stale_reports: Vec::new(),
            fresh: Vec::new(),
        };
        for name in served {
            match i.storage_nodes.get(name) {
                Some(sn) => f.count(name, sn),
                None => f.not_reporting.push(name.clone()),
            }
        }
        f.unsupported.sort();
        f.counts.unsupported_nodes = f
            .unsupported
            .iter()
            .take(MAX_UNSUPPORTED_LISTED)
            .cloned()
            .collect();
        f
    }

    fn count(&mut self, name: &str, sn: &'a StorageNode) {
        let st = &mut self.counts;
        st.reporting += 1;
        // A report nobody vouches for any more counts as unknown, not as its content.
        let node = self.nodes.get(name).copied();
        if let Some(why) = staleness::staleness(sn, node, self.i.now) {
            st.stale += 1;
            self.stale_reports.push((name.to_string(), why));
            return;
        }
        self.fresh.push(sn);
        let status = sn.status.clone().unwrap_or_default();
        // Tuned=False is a failure; no verdict yet (a report still being written) is not.
        match condition_true(sn, nc::TUNED).or(status.aio.as_ref().map(|a| a.tuned)) {
            Some(true) => st.tuned += 1,
            Some(false) => self
                .untuned
                .push((name.to_string(), condition_message(sn, nc::TUNED))),
            None => {}
        }
        match &status.io_uring {
            Some(r) if r.supported => st.io_uring_supported += 1,
            Some(r) => {
                st.io_uring_unsupported += 1;
                self.unsupported.push(UnsupportedNode {
                    name: name.to_string(),
                    reason: r.reason.clone(),
                    errno: r.errno,
                    kernel: status.kernel.clone(),
                });
            }
            None => {}
        }
        for d in status.data_dirs.iter().filter(|d| !d.available) {
            self.dirs.add(self.i.cluster, name, d);
        }
        if condition_true(sn, nc::READY) == Some(true) {
            st.ready += 1;
        } else {
            self.not_ready.push(name.to_string());
        }
        let generation = self.i.cluster.metadata.generation;
        if generation.is_some() && status.applied_generation == generation {
            st.up_to_date += 1;
        } else {
            self.behind.push(name.to_string());
        }
    }

    fn condition(&self, type_: &str, (status, reason, message): Verdict) -> Condition {
        condition(
            &self.prev.conditions,
            type_,
            status,
            reason,
            message,
            self.i.cluster.metadata.generation,
            self.i.now,
        )
    }

    fn namespace(&self) -> String {
        self.i.cluster.namespace().unwrap_or_default()
    }

    fn generation_text(&self) -> String {
        self.i
            .cluster
            .metadata
            .generation
            .map_or("?".into(), |g| g.to_string())
    }

    /// `kubectl ... get pods` of this cluster's agents, for messages that point at them.
    fn agent_pods_hint(&self) -> String {
        format!(
            "kubectl -n {} get pods -l {}={} -o wide",
            self.namespace(),
            keys::LABEL_CLUSTER_NAME,
            self.i.cluster.name_any()
        )
    }

    /// `n4 (agent silent for 5m)`, one per stale report.
    fn stale_list(&self) -> Vec<String> {
        self.stale_reports
            .iter()
            .map(|(n, why)| format!("{n} ({})", why.describe()))
            .collect()
    }

    /// Ready: every selected node can run the storage service.
    pub fn ready(&self) -> Condition {
        let st = &self.counts;
        let verdict = if st.desired == 0 {
            (
                false,
                reasons::NO_NODES_SELECTED,
                format!(
                    "spec.nodeSelector {:?} (with spec.tolerations) selects no node: label the storage nodes or change spec.nodeSelector",
                    self.i.cluster.spec.node_selector
                ),
            )
        } else if st.ready == st.desired {
            (
                true,
                reasons::ALL_NODES_READY,
                format!("all {} selected nodes are ready", st.desired),
            )
        } else {
            (false, reasons::NODES_NOT_READY, self.not_ready_message())
        };
        self.condition(cc::READY, verdict)
    }

    fn not_ready_message(&self) -> String {
        let st = &self.counts;
        let why: Vec<String> = self
            .not_ready
            .iter()
            .map(|n| {
                self.dirs
                    .on_node(n)
                    .or_else(|| {
                        self.unsupported.iter().find(|u| u.name == *n).map(|u| {
                            format!(
                                "{n} (io_uring {})",
                                u.reason.as_deref().unwrap_or("unsupported")
                            )
                        })
                    })
                    .unwrap_or_else(|| n.to_string())
            })
            .collect();
        let mut msg = format!("{} of {} selected nodes ready", st.ready, st.desired);
        if !why.is_empty() {
            msg.push_str(&format!(
                "; not ready: {} (kubectl get stn <node> -o yaml shows why)",
                name_list(why.iter().map(String::as_str))
            ));
        }
        if !self.stale_reports.is_empty() {
            let list = self.stale_list();
            msg.push_str(&format!(
                "; report too old to trust from: {}",
                name_list(list.iter().map(String::as_str))
            ));
        }
        if !self.not_reporting.is_empty() {
            msg.push_str(&format!(
                "; no report from: {} (check the agent pods: {})",
                name_list(self.not_reporting.iter().map(String::as_str)),
                self.agent_pods_hint()
            ));
        }
        msg
    }

    /// Progressing: the DaemonSet rollout, then the reports, then the generation.
    pub fn progressing(&self) -> Condition {
        let st = &self.counts;
        let ns = self.namespace();
        let ds_name = format!("{}-agent", self.i.cluster.name_any());
        let gen_txt = self.generation_text();
        let rollout = self.i.daemon_set.map(|ds| {
            let s = ds.status.clone().unwrap_or_default();
            let observed = s.observed_generation >= ds.metadata.generation;
            let updated = s.updated_number_scheduled.unwrap_or(0);
            let available = s.number_available.unwrap_or(0);
            (observed, s.desired_number_scheduled, updated, available)
        });
        let verdict = match rollout {
            _ if !self.i.refused.is_empty() => (
                false,
                reasons::SPEC_REFUSED,
                "nothing rolled out: the spec breaks a limit (see Degraded)".into(),
            ),
            _ if st.desired == 0 => (
                false,
                reasons::NO_NODES_SELECTED,
                "nothing to roll out: no node selected".into(),
            ),
            None => (
                true,
                reasons::CREATING_AGENTS,
                format!("creating the agent DaemonSet {ns}/{ds_name}"),
            ),
            Some((observed, want, updated, available))
                if !observed || updated < want || available < want =>
            {
                (
                    true,
                    reasons::ROLLING_OUT,
                    format!(
                        "agent DaemonSet {ns}/{ds_name}: {updated} of {want} pods updated, {available} available (kubectl -n {ns} rollout status ds/{ds_name})"
                    ),
                )
            }
            _ if !self.not_reporting.is_empty() => (
                true,
                reasons::WAITING_FOR_REPORTS,
                format!(
                    "{} of {} selected nodes have no StorageNode yet: {}",
                    self.not_reporting.len(),
                    st.desired,
                    name_list(self.not_reporting.iter().map(String::as_str))
                ),
            ),
            _ if !self.behind.is_empty() => (
                true,
                reasons::APPLYING_CONFIG,
                format!(
                    "{} of {} nodes have not applied generation {gen_txt} yet: {}",
                    self.behind.len(),
                    st.reporting,
                    name_list(self.behind.iter().map(String::as_str))
                ),
            ),
            _ => (
                false,
                reasons::ROLLOUT_COMPLETE,
                format!("all {} nodes run generation {gen_txt}", st.desired),
            ),
        };
        self.condition(cc::PROGRESSING, verdict)
    }

    /// Degraded: something a person must fix, the most fundamental first.
    pub fn degraded(&self) -> Condition {
        let problem = self
            .spec_refused()
            .or_else(|| self.node_conflict())
            .or_else(|| self.reports_stale())
            .or_else(|| self.io_uring_required_but_unsupported())
            .or_else(|| self.data_dirs_unavailable())
            .or_else(|| self.tuning_failed());
        let verdict = match problem {
            Some((reason, message)) => (true, reason, message),
            None => (false, reasons::AS_EXPECTED, self.no_problem()),
        };
        self.condition(cc::DEGRADED, verdict)
    }

    fn spec_refused(&self) -> Option<(&'static str, String)> {
        if self.i.refused.is_empty() {
            return None;
        }
        let parts: Vec<String> = self.i.refused.iter().map(|v| v.to_string()).collect();
        Some((
            reasons::SPEC_REFUSED,
            format!(
                "{}; the operator renders nothing for this StorageCluster until the spec is fixed (an agent DaemonSet rendered earlier is left as it was)",
                parts.join("; ")
            ),
        ))
    }

    fn node_conflict(&self) -> Option<(&'static str, String)> {
        if self.conflicts.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .conflicts
            .iter()
            .map(|(owner, nodes)| {
                format!(
                    "{} also selected by the older StorageCluster {owner} (no agent of this cluster runs there)",
                    name_list(nodes.iter().map(String::as_str))
                )
            })
            .collect();
        Some((
            reasons::NODE_CONFLICT,
            format!(
                "{}; a node belongs to one StorageCluster: narrow spec.nodeSelector so they do not overlap",
                parts.join("; ")
            ),
        ))
    }

    fn reports_stale(&self) -> Option<(&'static str, String)> {
        if self.stale_reports.is_empty() {
            return None;
        }
        let list = self.stale_list();
        Some((
            reasons::REPORTS_STALE,
            format!(
                "{} of {} selected nodes have no current report: {}; their {} and {} labels are removed until their agent reports again: check the agent pods ({})",
                self.stale_reports.len(),
                self.counts.desired,
                name_list(list.iter().map(String::as_str)),
                keys::LABEL_READY,
                keys::LABEL_AIO_TUNED,
                self.agent_pods_hint()
            ),
        ))
    }

    fn io_uring_required_but_unsupported(&self) -> Option<(&'static str, String)> {
        if self.i.cluster.spec.aio.io_uring != IoUringPolicy::Required
            || self.unsupported.is_empty()
        {
            return None;
        }
        let list: Vec<String> = self
            .unsupported
            .iter()
            .map(|u| format!("{} ({})", u.name, u.reason.as_deref().unwrap_or("unknown")))
            .collect();
        Some((
            reasons::IO_URING_UNSUPPORTED,
            format!(
                "spec.aio.ioUring is Required but io_uring fails on {} of {} nodes: {}; fix the node (see status.unsupportedNodes and kubectl get stn <node> -o yaml) or set spec.aio.ioUring: Preferred to use the pread fallback there",
                self.unsupported.len(),
                self.counts.reporting,
                name_list(list.iter().map(String::as_str))
            ),
        ))
    }

    fn data_dirs_unavailable(&self) -> Option<(&'static str, String)> {
        (!self.dirs.is_empty()).then(|| {
            (
                reasons::DATA_DIR_UNAVAILABLE,
                self.dirs.message(self.counts.desired),
            )
        })
    }

    /// Only once every node reported: a missing report is not a failed tuning.
    fn tuning_failed(&self) -> Option<(&'static str, String)> {
        if self.i.cluster.spec.sysctl.mode != SysctlMode::Enforce
            || self.untuned.is_empty()
            || !self.not_reporting.is_empty()
        {
            return None;
        }
        let list: Vec<String> = self
            .untuned
            .iter()
            .map(|(n, m)| match m {
                Some(m) => format!("{n} ({m})"),
                None => n.to_string(),
            })
            .collect();
        Some((
            reasons::TUNING_FAILED,
            format!(
                "fs.aio-max-nr is below what spec.aio needs on {} nodes: {}",
                self.untuned.len(),
                name_list(list.iter().map(String::as_str))
            ),
        ))
    }

    fn no_problem(&self) -> String {
        if self.counts.io_uring_unsupported > 0 {
            format!(
                "no problem to fix; {} nodes use the pread fallback (spec.aio.ioUring is {:?})",
                self.counts.io_uring_unsupported, self.i.cluster.spec.aio.io_uring
            )
        } else {
            "no problem to fix".into()
        }
    }
}
