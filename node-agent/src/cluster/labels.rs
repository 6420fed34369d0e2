//! Node labels and the taint the agent owns, NFD-style: the keys it sets are recorded in
//! the `ringmaster.io/owned-labels` annotation, stale ones (recorded, no longer wanted)
//! are removed, and nothing else on the Node is ever touched. Pure; no I/O.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Taint;
use ringmaster_api::keys;

/// The node's verdict as the labels express it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeVerdict {
    /// io_uring works (`Some(true)`), does not (`Some(false)`), or no reader report yet.
    pub io_uring_supported: Option<bool>,
    /// errno name when unsupported.
    pub io_uring_reason: Option<String>,
    pub aio_tuned: bool,
    pub ready: bool,
}

/// Labels the agent wants on its Node for `v`.
pub fn desired_labels(v: &NodeVerdict) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    match v.io_uring_supported {
        Some(true) => {
            m.insert(keys::LABEL_IO_URING.into(), keys::SUPPORTED.into());
        }
        Some(false) => {
            m.insert(keys::LABEL_IO_URING.into(), keys::UNSUPPORTED.into());
            let reason = v
                .io_uring_reason
                .as_deref()
                .map(label_value)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "UNKNOWN".into());
            m.insert(keys::LABEL_IO_URING_REASON.into(), reason);
        }
        None => {}
    }
    m.insert(keys::LABEL_AIO_TUNED.into(), v.aio_tuned.to_string());
    m.insert(keys::LABEL_READY.into(), v.ready.to_string());
    m
}

/// A string made a valid label value (≤ 63 chars of `[A-Za-z0-9._-]`, alphanumeric ends).
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Keys recorded in the owned-labels annotation. Only `ringmaster.io/` keys count: an
/// edited annotation can never make the agent remove somebody else's label.
pub fn parse_owned(annotation: Option<&str>) -> BTreeSet<String> {
    annotation
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| keys::is_ringmaster_key(k))
        .map(String::from)
        .collect()
}

/// The annotation value recording `labels`' keys (sorted, comma-separated).
pub fn format_owned(labels: &BTreeMap<String, String>) -> String {
    labels.keys().cloned().collect::<Vec<_>>().join(",")
}

/// Owned keys still on the Node that are no longer wanted: remove exactly these.
pub fn stale_labels(
    node_labels: &BTreeMap<String, String>,
    owned: &BTreeSet<String>,
    desired: &BTreeMap<String, String>,
) -> Vec<String> {
    owned
        .iter()
        .filter(|k| node_labels.contains_key(*k) && !desired.contains_key(*k))
        .cloned()
        .collect()
}

/// The Ringmaster taint.
pub fn ringmaster_taint() -> Taint {
    Taint {
        key: keys::TAINT_IO_URING_UNSUPPORTED.into(),
        value: None,
        effect: "NoSchedule".into(),
        time_added: None,
    }
}

/// The Node's taint list with ours present exactly once (`want`) or absent, everybody
/// else's kept as they are and in order. `None` when the list is already right.
pub fn reconcile_taints(current: &[Taint], want: bool) -> Option<Vec<Taint>> {
    let ours = |t: &Taint| t.key == keys::TAINT_IO_URING_UNSUPPORTED;
    let mut next: Vec<Taint> = current.iter().filter(|t| !ours(t)).cloned().collect();
    if want {
        // Keep our existing entry if it is right (its timeAdded stays), else the canonical one.
        let mine = current
            .iter()
            .find(|t| ours(t) && t.effect == "NoSchedule" && t.value.is_none())
            .cloned()
            .unwrap_or_else(ringmaster_taint);
        next.push(mine);
    }
    let same = next.len() == current.len() && next.iter().all(|t| current.contains(t));
    (!same).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn supported_node_has_no_reason() {
        let l = desired_labels(&NodeVerdict {
            io_uring_supported: Some(true),
            io_uring_reason: Some("ENOSYS".into()),
            aio_tuned: true,
            ready: true,
        });
        assert_eq!(l[keys::LABEL_IO_URING], "supported");
        assert!(!l.contains_key(keys::LABEL_IO_URING_REASON));
        assert_eq!(l[keys::LABEL_AIO_TUNED], "true");
        assert_eq!(l[keys::LABEL_READY], "true");
    }

    #[test]
    fn unsupported_node_has_reason() {
        let l = desired_labels(&NodeVerdict {
            io_uring_supported: Some(false),
            io_uring_reason: Some("EPERM".into()),
            aio_tuned: false,
            ready: false,
        });
        assert_eq!(l[keys::LABEL_IO_URING], "unsupported");
        assert_eq!(l[keys::LABEL_IO_URING_REASON], "EPERM");
        assert_eq!(l[keys::LABEL_AIO_TUNED], "false");
        let unknown = desired_labels(&NodeVerdict {
            io_uring_supported: Some(false),
            ..Default::default()
        });
        assert_eq!(unknown[keys::LABEL_IO_URING_REASON], "UNKNOWN");
        // No report yet: no io-uring label at all rather than a guess.
        let none = desired_labels(&NodeVerdict::default());
        assert!(!none.contains_key(keys::LABEL_IO_URING));
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("ENOSYS"), "ENOSYS");
        assert_eq!(label_value("errno 95 (?)"), "errno_95");
        assert_eq!(label_value(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn owned_annotation_only_counts_our_prefix() {
        let owned = parse_owned(Some(
            "ringmaster.io/ready, example.com/team,,ringmaster.io/io-uring",
        ));
        assert_eq!(
            owned.into_iter().collect::<Vec<_>>(),
            vec!["ringmaster.io/io-uring", "ringmaster.io/ready"]
        );
        assert!(parse_owned(None).is_empty());
    }

    #[test]
    fn stale_are_owned_present_and_unwanted() {
        let node: BTreeMap<String, String> = [
            ("ringmaster.io/io-uring-reason", "ENOSYS"),
            ("ringmaster.io/io-uring", "supported"),
            ("ringmaster.io/custom", "x"),
            ("team", "a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let owned = parse_owned(Some(
            "ringmaster.io/io-uring-reason,ringmaster.io/io-uring,ringmaster.io/gone",
        ));
        let desired = desired_labels(&NodeVerdict {
            io_uring_supported: Some(true),
            ..Default::default()
        });
        assert_eq!(
            stale_labels(&node, &owned, &desired),
            vec!["ringmaster.io/io-uring-reason"]
        );
        assert_eq!(
            format_owned(&desired),
            "ringmaster.io/aio-tuned,ringmaster.io/io-uring,ringmaster.io/ready"
        );
    }

    #[test]
    fn taints_keep_others_and_never_duplicate() {
        let kwok = taint("kwok.x-k8s.io/node", "NoSchedule");
        let ours = ringmaster_taint();
        // Add once.
        let next = reconcile_taints(std::slice::from_ref(&kwok), true).unwrap();
        assert_eq!(next, vec![kwok.clone(), ours.clone()]);
        // Already right: nothing to do.
        assert!(reconcile_taints(&next, true).is_none());
        // Duplicates (e.g. written by a crashed older agent) collapse to one.
        let dup = vec![ours.clone(), kwok.clone(), ours.clone()];
        assert_eq!(
            reconcile_taints(&dup, true).unwrap(),
            vec![kwok.clone(), ours.clone()]
        );
        // Remove only ours.
        assert_eq!(
            reconcile_taints(&[kwok.clone(), ours.clone()], false).unwrap(),
            vec![kwok.clone()]
        );
        assert!(reconcile_taints(std::slice::from_ref(&kwok), false).is_none());
        assert!(reconcile_taints(&[], false).is_none());
    }
}
