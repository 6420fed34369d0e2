//! How often one StorageCluster is reconciled and its status written while its fleet
//! reports fast. A debounce that restarts on every event would hold the reconcile back
//! until the events pause — at a thousand reports a second, until the last one plus the
//! debounce, and longer while the DaemonSet controller keeps updating its status. Instead:
//!
//! - a reconcile starts at once, and at most every [`RECONCILE_GAP`] for one cluster
//!   (events meanwhile fold into the next one: the controller runs one reconcile per
//!   object at a time);
//! - a status write that changes what a reader acts on (a generation observed, a condition
//!   turning, every node settled) goes out at once; progress in between (counts climbing,
//!   messages) at most every [`PROGRESS_WRITE_GAP`], the rest deferred by a requeue.
//!
//! Pure; the controller keeps one [`Pacing`] and passes the time in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use ringmaster_api::StorageClusterStatus;

/// Least time between the starts of two reconciles of one cluster.
pub const RECONCILE_GAP: Duration = Duration::from_millis(100);
/// Least time between two status writes of one cluster that only show progress.
pub const PROGRESS_WRITE_GAP: Duration = Duration::from_secs(1);
/// How long a status we wrote is taken as the cluster's, while the watch may still bring
/// the older one back.
const OWN_WRITE_HORIZON: Duration = Duration::from_secs(5);

/// What is remembered per cluster.
#[derive(Debug)]
struct Entry {
    last_start: Option<Instant>,
    last_write: Option<(Instant, StorageClusterStatus)>,
}

#[derive(Debug)]
pub struct Pacing<K> {
    clusters: HashMap<K, Entry>,
}

impl<K> Default for Pacing<K> {
    fn default() -> Self {
        Pacing {
            clusters: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Pacing<K> {
    fn entry(&mut self, key: &K) -> &mut Entry {
        self.clusters.entry(key.clone()).or_insert(Entry {
            last_start: None,
            last_write: None,
        })
    }

    /// How long the reconcile of `key` starting at `now` waits first; records its start.
    pub fn reconcile_delay(&mut self, key: &K, now: Instant) -> Duration {
        let e = self.entry(key);
        let delay = e
            .last_start
            .map_or(Duration::ZERO, |t| RECONCILE_GAP.saturating_sub(now - t));
        e.last_start = Some(now + delay);
        delay
    }

    /// Whether to write `new` over `current` (the status the cache holds) at `now`:
    /// `Ok(())` to write now, `Err(d)` to look again in `d`, `None` when there is nothing
    /// to write (the same, or what we wrote a moment ago and the cache lags behind).
    pub fn status_write(
        &self,
        key: &K,
        current: Option<&StorageClusterStatus>,
        new: &StorageClusterStatus,
        now: Instant,
    ) -> Option<Result<(), Duration>> {
        let last = self.clusters.get(key).and_then(|e| e.last_write.as_ref());
        if current == Some(new)
            || last.is_some_and(|(t, st)| st == new && now - *t < OWN_WRITE_HORIZON)
        {
            return None;
        }
        let base = last
            .filter(|(t, _)| now - *t < OWN_WRITE_HORIZON)
            .map(|(_, st)| st)
            .or(current);
        if significant(base, new) {
            return Some(Ok(()));
        }
        match last.map(|(t, _)| PROGRESS_WRITE_GAP.saturating_sub(now - *t)) {
            Some(wait) if !wait.is_zero() => Some(Err(wait)),
            _ => Some(Ok(())),
        }
    }

    /// Record that `status` was written at `now`.
    pub fn wrote(&mut self, key: &K, status: &StorageClusterStatus, now: Instant) {
        self.entry(key).last_write = Some((now, status.clone()));
    }

    /// The cluster is gone.
    pub fn forget(&mut self, key: &K) {
        self.clusters.remove(key);
    }
}

/// Does `new` change what somebody acts on, compared with `prev`: the generation observed,
/// a condition's status or reason, or every selected node settled (reporting, ready and
/// at the current generation)?
pub fn significant(prev: Option<&StorageClusterStatus>, new: &StorageClusterStatus) -> bool {
    let Some(prev) = prev else {
        return true;
    };
    let turns = |s: &StorageClusterStatus| {
        let mut v: Vec<(String, String, String)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        v.sort();
        v
    };
    let settled = |s: &StorageClusterStatus| {
        s.reporting == s.desired && s.ready == s.desired && s.up_to_date == s.desired
    };
    prev.observed_generation != new.observed_generation
        || turns(prev) != turns(new)
        || (settled(new) && !settled(prev))
        || (settled(new) && (prev.desired, prev.ready) != (new.desired, new.ready))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn st(gen: i64, desired: i32, ready: i32, up_to_date: i32) -> StorageClusterStatus {
        StorageClusterStatus {
            observed_generation: Some(gen),
            desired,
            reporting: ready,
            ready,
            up_to_date,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready == desired { "True" } else { "False" }.into(),
                reason: if ready == desired {
                    "AllNodesReady"
                } else {
                    "NodesNotReady"
                }
                .into(),
                message: format!("{ready} of {desired}"),
                observed_generation: Some(gen),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn reconciles_start_at_once_then_at_most_every_gap() {
        let mut p = Pacing::default();
        let t0 = Instant::now();
        assert_eq!(p.reconcile_delay(&"a", t0), Duration::ZERO);
        assert_eq!(
            p.reconcile_delay(&"a", t0 + Duration::from_millis(30)),
            Duration::from_millis(70)
        );
        // The delayed one counts from when it runs (t0 + 100 ms).
        assert_eq!(
            p.reconcile_delay(&"a", t0 + Duration::from_millis(150)),
            Duration::from_millis(50)
        );
        assert_eq!(p.reconcile_delay(&"b", t0), Duration::ZERO, "per cluster");
        assert_eq!(
            p.reconcile_delay(&"a", t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn progress_waits_for_the_gap_what_matters_does_not() {
        let mut p = Pacing::default();
        let t0 = Instant::now();
        // A spec change rolling out: every node ready, upToDate climbing.
        let first = st(1, 100, 100, 10);
        assert_eq!(p.status_write(&"a", None, &first, t0), Some(Ok(())));
        p.wrote(&"a", &first, t0);
        // Counts climbing: not before a second after the last write.
        let more = st(1, 100, 100, 50);
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(
            p.status_write(&"a", Some(&first), &more, t1),
            Some(Err(Duration::from_millis(700)))
        );
        assert_eq!(
            p.status_write(&"a", Some(&first), &more, t0 + PROGRESS_WRITE_GAP),
            Some(Ok(()))
        );
        // Every node settled: at once.
        let done = st(1, 100, 100, 100);
        assert_eq!(p.status_write(&"a", Some(&first), &done, t1), Some(Ok(())));
        // A new generation observed: at once.
        let gen2 = st(2, 100, 100, 10);
        assert_eq!(p.status_write(&"a", Some(&first), &gen2, t1), Some(Ok(())));
    }

    #[test]
    fn what_we_just_wrote_is_not_written_again_while_the_cache_lags() {
        let mut p = Pacing::default();
        let t0 = Instant::now();
        let old = st(1, 100, 10, 10);
        let done = st(1, 100, 100, 100);
        p.wrote(&"a", &done, t0);
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(p.status_write(&"a", Some(&old), &done, t1), None);
        assert_eq!(p.status_write(&"a", Some(&done), &done, t1), None);
        // Long after, the cache is what counts: a status somebody else changed is fixed.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(p.status_write(&"a", Some(&old), &done, t2), Some(Ok(())));
        p.forget(&"a");
        assert_eq!(p.status_write(&"a", Some(&old), &done, t1), Some(Ok(())));
    }

    #[test]
    fn significance() {
        let a = st(1, 100, 10, 10);
        assert!(significant(None, &a));
        assert!(!significant(Some(&a), &st(1, 100, 20, 20)));
        assert!(significant(Some(&a), &st(2, 100, 10, 10)));
        assert!(significant(Some(&a), &st(1, 100, 100, 100)));
        let mut flipped = a.clone();
        flipped.conditions[0].reason = "Other".into();
        assert!(significant(Some(&a), &flipped));
        let mut msg = a.clone();
        msg.conditions[0].message = "changed".into();
        assert!(!significant(Some(&a), &msg));
    }
}
