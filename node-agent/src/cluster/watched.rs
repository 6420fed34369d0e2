//! One object watched by name: the agent's StorageCluster, its Node and its StorageNode,
//! each through one watch with a `metadata.name` field selector. A steady agent sends the
//! API server nothing for them: changes are pushed, and what the agent writes itself it
//! takes from the write's response (newer than what the watch has delivered yet), so a
//! pass right after a write does not write again from a stale copy.
//!
//! A watch is a request too: the server ends it after its timeout and the watcher opens
//! the next one from the last bookmark. The timeout is long (`--watch-timeout-seconds`)
//! and spread per agent, so a fleet started together does not re-watch together.

use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// What a watch knows about one object.
#[derive(Clone, Debug, PartialEq)]
pub enum Watched<K> {
    /// Not listed yet.
    Unknown,
    Present(Box<K>),
    Absent,
}

impl<K> Watched<K> {
    pub fn present(&self) -> Option<&K> {
        match self {
            Watched::Present(k) => Some(k),
            _ => None,
        }
    }

    /// `None` until the watch has listed; then the object, if it exists.
    pub fn listed(self) -> Option<Option<K>> {
        match self {
            Watched::Unknown => None,
            Watched::Present(k) => Some(Some(*k)),
            Watched::Absent => Some(None),
        }
    }
}

/// This agent's watch timeout: `base` seconds plus up to half again, drawn once per
/// process, so agents started by one rollout spread their re-watches.
pub fn spread_timeout(base: u32) -> u32 {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    base.saturating_add((r % (u64::from(base) / 2 + 1)) as u32)
}

/// Watch the object `name` of `api` (one watch, `timeout_secs` per request), publishing
/// its latest state.
pub fn watch_named<K>(api: Api<K>, name: &str, timeout_secs: u32) -> watch::Receiver<Watched<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let (tx, rx) = watch::channel(Watched::Unknown);
    let cfg = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(timeout_secs);
    let what = format!("{} {name}", K::kind(&Default::default()));
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut seen_in_init = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                    seen_in_init = true;
                    let _ = tx.send(Watched::Present(Box::new(o)));
                }
                Ok(watcher::Event::Delete(_)) => {
                    let _ = tx.send(Watched::Absent);
                }
                Ok(watcher::Event::Init) => seen_in_init = false,
                Ok(watcher::Event::InitDone) => {
                    if !seen_in_init {
                        let _ = tx.send(Watched::Absent);
                    }
                }
                Err(e) => tracing::warn!(error = %e, object = %what, "watch failed; retrying"),
            }
        }
    });
    rx
}

/// An object as the agent knows it: what its watch delivered, unless the agent's own
/// last write returned something newer.
pub struct View<K> {
    rx: watch::Receiver<Watched<K>>,
    written: Option<K>,
}

impl<K: Resource + Clone> View<K> {
    pub fn new(rx: watch::Receiver<Watched<K>>) -> Self {
        View { rx, written: None }
    }

    /// The newest state known.
    pub fn current(&mut self) -> Watched<K> {
        let fresh = self.rx.has_changed().unwrap_or(false);
        let watched = self.rx.borrow_and_update().clone();
        if let Some(w) = &self.written {
            if keep_written(&watched, w, fresh) {
                return Watched::Present(Box::new(w.clone()));
            }
            self.written = None;
        }
        watched
    }

    /// Record the response of the agent's own write.
    pub fn wrote(&mut self, obj: K) {
        self.rx.borrow_and_update();
        self.written = Some(obj);
    }
}

fn version<K: Resource>(k: &K) -> Option<u64> {
    k.resource_version()?.parse().ok()
}

/// Is our written copy still newer than what the watch says? `fresh`: the watch delivered
/// something since the write. Resource versions of one object from etcd increase; when
/// they cannot be compared the watch wins (it is never behind for long).
fn keep_written<K: Resource>(watched: &Watched<K>, written: &K, fresh: bool) -> bool {
    match watched {
        Watched::Unknown => true,
        // Deleted after our write, or not delivered yet.
        Watched::Absent => !fresh,
        Watched::Present(w) => {
            w.uid() == written.uid()
                && matches!((version(w.as_ref()), version(written)), (Some(a), Some(b)) if b > a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    fn node(uid: &str, rv: &str, label: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "uid": uid, "resourceVersion": rv, "labels": {"l": label}},
        }))
        .unwrap()
    }

    fn label(w: &Watched<Node>) -> Option<String> {
        w.present().map(|n| n.labels()["l"].clone())
    }

    #[test]
    fn own_write_wins_until_the_watch_catches_up() {
        let (tx, rx) = watch::channel(Watched::Present(Box::new(node("u", "10", "old"))));
        let mut v = View::new(rx);
        assert_eq!(label(&v.current()).as_deref(), Some("old"));
        v.wrote(node("u", "12", "mine"));
        assert_eq!(label(&v.current()).as_deref(), Some("mine"));
        // An event from before the write arrives late: still ours.
        tx.send(Watched::Present(Box::new(node("u", "11", "between"))))
            .unwrap();
        assert_eq!(label(&v.current()).as_deref(), Some("mine"));
        // The watch delivers our write, then somebody else's change: the watch's.
        tx.send(Watched::Present(Box::new(node("u", "12", "mine"))))
            .unwrap();
        assert_eq!(label(&v.current()).as_deref(), Some("mine"));
        tx.send(Watched::Present(Box::new(node("u", "13", "theirs"))))
            .unwrap();
        assert_eq!(label(&v.current()).as_deref(), Some("theirs"));
    }

    #[test]
    fn a_created_object_is_known_before_its_event_and_a_deletion_after_it() {
        let (tx, rx) = watch::channel(Watched::Absent);
        let mut v = View::new(rx);
        assert_eq!(v.current(), Watched::Absent);
        v.wrote(node("u", "5", "created"));
        assert_eq!(label(&v.current()).as_deref(), Some("created"));
        tx.send(Watched::Absent).unwrap();
        assert_eq!(v.current(), Watched::Absent, "deleted after our write");
    }

    #[test]
    fn another_incarnation_or_unparsable_versions_trust_the_watch() {
        let (tx, rx) = watch::channel(Watched::Unknown);
        let mut v = View::new(rx);
        v.wrote(node("u1", "20", "mine"));
        assert_eq!(label(&v.current()).as_deref(), Some("mine"));
        tx.send(Watched::Present(Box::new(node("u2", "3", "new node"))))
            .unwrap();
        assert_eq!(label(&v.current()).as_deref(), Some("new node"));
        v.wrote(node("u2", "opaque", "mine"));
        tx.send(Watched::Present(Box::new(node("u2", "4", "theirs"))))
            .unwrap();
        assert_eq!(label(&v.current()).as_deref(), Some("theirs"));
    }

    #[test]
    fn spread_timeouts_stay_within_one_and_a_half_times_the_base() {
        for _ in 0..100 {
            let t = spread_timeout(3600);
            assert!((3600..=5400).contains(&t), "{t}");
        }
        assert_eq!(spread_timeout(0), 0);
    }
}
