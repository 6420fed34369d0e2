//! Pure aggregation: Nodes + StorageNodes + the agent DaemonSet → one StorageCluster
//! status with conditions a person can act on, and the transitions worth an Event.
//! No I/O; the controller feeds it from its watch caches.
//!
//! [`aggregate`] is the entry point: [`crate::scheduling`] picks the nodes, [`fleet`] tallies
//! their reports and builds one condition per method, [`transitions`] turns the change into
//! Events.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use ringmaster_api::limits::Violation;
use ringmaster_api::{node_conditions as nc, StorageCluster, StorageClusterStatus, StorageNode};

use crate::scheduling;
use crate::staleness::{self, Stale};

mod data_dirs;
mod fleet;
mod transitions;

use fleet::Fleet;

/// How many node names a condition message lists before "and N more".
const NAMES_IN_MESSAGE: usize = 5;

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
    let selected = scheduling::selection(sc, i.nodes.iter().copied());
    let conflicts = scheduling::conflicts(sc, &selected, i.clusters.iter().copied(), i.nodes);
    let fleet = Fleet::observe(i, &selected, &conflicts);
    let mut status = fleet.counts.clone();
    status.conditions = vec![fleet.ready(), fleet.progressing(), fleet.degraded()];
    let transitions = transitions::transitions(&fleet.prev, &status, sc.spec.aio.io_uring);
    Outcome {
        status,
        selected,
        transitions,
        recheck_after: staleness::next_expiry(fleet.fresh, i.now),
        stale: fleet.stale_reports,
        conflicts,
    }
}

/// True when two statuses say the same (ignoring nothing: times are carried over by
/// [`condition`], so an unchanged world compares equal and nothing is written).
pub fn unchanged(prev: Option<&StorageClusterStatus>, new: &StorageClusterStatus) -> bool {
    prev == Some(new)
}

#[cfg(test)]
mod tests;
