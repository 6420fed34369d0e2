//! The Events worth publishing: what changed between the previous and the new status.

use std::collections::BTreeSet;

use ringmaster_api::{
    cluster_conditions as cc, reasons, IoUringPolicy, StorageClusterStatus, MAX_UNSUPPORTED_LISTED,
};

use super::{find, Transition};

/// Events for what changed between the previous and the new status.
pub(super) fn transitions(
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
