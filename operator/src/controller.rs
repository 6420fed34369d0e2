//! The StorageCluster controller: watches, a small `reconcile`, `error_policy` with
//! backoff. Everything it decides comes from `render` (objects) and `status`
//! (aggregation); this file only reads caches and writes what changed.

use ringmaster_api::reasons;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{future, FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Node, NodeStatus, NodeSystemInfo, ObjectReference, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use ringmaster_api::{
    cluster_conditions as cc, keys, StorageCluster, StorageClusterStatus, StorageNode,
};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::finalizer;
use crate::metrics::{ErrorLabels, Metrics, ResultLabels};
use crate::pacing::Pacing;
use crate::render::{self, ClusterId};
use crate::scheduling;
use crate::status::{self, Inputs};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing a patch: {0}")]
    Json(#[from] serde_json::Error),
    #[error("StorageCluster {0} has no namespace")]
    NoNamespace(String),
}

/// Every value of [`Error::kind`]: the error counter starts at 0 for each, so the first
/// failure is an increase `rate()` can see, and the series exist before anything fails.
pub const ERROR_KINDS: [&str; 6] = [
    "conflict",
    "forbidden",
    "invalid",
    "kube",
    "json",
    "no_namespace",
];

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "invalid",
            Error::Kube(_) => "kube",
            Error::Json(_) => "json",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch StorageClusters (and their DaemonSets/ServiceAccounts) only here.
    pub namespace: Option<String>,
    /// How long the finalizer waits for agents to restore their nodes.
    pub cleanup_timeout: Duration,
    /// Safety-net resync of a steady cluster (it writes nothing when nothing changed).
    pub resync: Duration,
    /// How often the read-token Secret and read NetworkPolicy are made sure of again
    /// without a change (`--read-access-recheck`; they are not watched).
    pub read_access_recheck: Duration,
    /// Identity in Events (`reportingInstance`).
    pub instance: String,
    /// What the admin decides about the agent pods (`--agent-image`).
    pub render: render::RenderSettings,
    /// What the admin allows a StorageCluster to ask for (data dir roots, Unconfined,
    /// control-plane tolerations).
    pub policy: ringmaster_api::limits::AdminPolicy,
}

/// What every reconcile shares: the client, the watch caches, metrics, events.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub clusters: Store<StorageCluster>,
    pub nodes: Store<Node>,
    pub storage_nodes: Store<StorageNode>,
    pub daemon_sets: Store<DaemonSet>,
    pub service_accounts: Store<ServiceAccount>,
    pub bindings: Store<ClusterRoleBinding>,
    /// Nodes each cluster selected at its last reconcile, so a Node that leaves a
    /// selection still maps back to the cluster it left.
    selections: Mutex<HashMap<ObjectRef<StorageCluster>, BTreeSet<String>>>,
    /// Consecutive failures per cluster (error_policy backoff).
    failures: Mutex<HashMap<ObjectRef<StorageCluster>, u32>>,
    /// Extra reconcile requests (other clusters whose node conflicts may have changed).
    requeue: mpsc::UnboundedSender<ObjectRef<StorageCluster>>,
    /// When each cluster was last reconciled and its status written (`pacing`).
    pacing: Mutex<Pacing<ObjectRef<StorageCluster>>>,
    /// The read-token Secret and read NetworkPolicy of each cluster (`read_access`).
    read_access: crate::read_access::ReadAccess,
}

fn cluster_ref(sc: &StorageCluster) -> ObjectRef<StorageCluster> {
    ObjectRef::from_obj(sc)
}

/// The cluster a labelled object (StorageNode, ClusterRoleBinding) belongs to.
fn labelled_cluster<K: Resource>(obj: &K) -> Option<ObjectRef<StorageCluster>> {
    let l = obj.labels();
    let ns = l.get(keys::LABEL_STORAGENODE_CLUSTER_NAMESPACE)?;
    let name = l.get(keys::LABEL_STORAGENODE_CLUSTER_NAME)?;
    Some(ObjectRef::new(name).within(ns))
}

fn belongs_to(obj: &impl Resource, id: &ClusterId) -> bool {
    let l = obj.labels();
    l.get(keys::LABEL_STORAGENODE_CLUSTER_NAMESPACE) == Some(&id.namespace)
        && l.get(keys::LABEL_STORAGENODE_CLUSTER_NAME) == Some(&id.name)
}

fn now() -> Timestamp {
    // Whole seconds: what the API server keeps, so a status read back compares equal.
    Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range")
}

impl Context {
    fn apply_params() -> PatchParams {
        PatchParams::apply(keys::MANAGER_OPERATOR).force()
    }

    /// Server-side apply of a rendered object unless the live one already carries the
    /// same rendered hash (then it would be a no-op write).
    async fn apply_owned<K>(&self, api: Api<K>, desired: &K, live: Option<Arc<K>>) -> Result<bool>
    where
        K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let want = render::live_hash(desired);
        if live.as_deref().and_then(render::live_hash) == want && want.is_some() {
            return Ok(false);
        }
        let name = desired.name_any();
        api.patch(&name, &Self::apply_params(), &Patch::Apply(desired))
            .await?;
        Ok(true)
    }

    async fn publish(&self, sc: &StorageCluster, t: &status::Transition) {
        let (warning, reason) = (t.warning, t.reason.as_str());
        let secondary = t.node.as_ref().map(|n| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(n.clone()),
            ..Default::default()
        });
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(t.note.clone()),
            action: t.action.into(),
            secondary,
        };
        if let Err(e) = self.recorder.publish(&ev, &sc.object_ref(&())).await {
            // An event is a courtesy; failing to record one must not fail the reconcile.
            warn!(error = %e, reason, "could not record event");
        }
    }

    /// This cluster's StorageNodes, by node name.
    fn storage_nodes_of(&self, id: &ClusterId) -> Vec<Arc<StorageNode>> {
        self.storage_nodes.state_filter(|sn| belongs_to(sn, id))
    }

    /// Ask for reconciles of every other cluster (node ownership may have moved).
    fn requeue_others(&self, me: &ObjectRef<StorageCluster>) {
        for c in self.clusters.state() {
            let r = cluster_ref(&c);
            if &r != me {
                let _ = self.requeue.send(r);
            }
        }
    }
}

async fn write_status(
    ctx: &Context,
    sc: &StorageCluster,
    id: &ClusterId,
    st: &StorageClusterStatus,
) -> Result<()> {
    let api: Api<StorageCluster> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let body = json!({
        "apiVersion": StorageCluster::api_version(&()),
        "kind": StorageCluster::kind(&()),
        "status": st,
    });
    api.patch_status(
        &sc.name_any(),
        &Context::apply_params(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// The main loop body: make the world match one StorageCluster, then report on it.
pub async fn reconcile(sc: Arc<StorageCluster>, ctx: Arc<Context>) -> Result<Action> {
    let delay = ctx
        .pacing
        .lock()
        .unwrap()
        .reconcile_delay(&cluster_ref(&sc), Instant::now());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let started = Instant::now();
    let id = ClusterId::of(&sc).ok_or_else(|| Error::NoNamespace(sc.name_any()))?;
    let result = if sc.metadata.deletion_timestamp.is_some() {
        ctx.pacing.lock().unwrap().forget(&cluster_ref(&sc));
        cleanup(&sc, &id, &ctx).await
    } else {
        apply(&sc, &id, &ctx).await
    };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels {
            result: if result.is_ok() { "ok" } else { "error" }.into(),
        })
        .inc();
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&cluster_ref(&sc));
    }
    result
}

/// Normal path: finalizer, owned objects, status.
async fn apply(sc: &StorageCluster, id: &ClusterId, ctx: &Context) -> Result<Action> {
    let me = cluster_ref(sc);
    if let Some(p) = finalizer::add_patch(sc) {
        let api: Api<StorageCluster> = Api::namespaced(ctx.client.clone(), &id.namespace);
        api.patch(
            &sc.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(p)?),
        )
        .await?;
        // The watch brings the updated object back; continue with this one meanwhile.
    }

    let ns = &id.namespace;
    let nodes = ctx.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let clusters = ctx.clusters.state();
    let cluster_refs: Vec<&StorageCluster> = clusters.iter().map(|c| c.as_ref()).collect();
    // Second line behind the API server's CEL rules and admission policy (absent when the
    // CRDs or the chart's policy are managed elsewhere, or for objects stored before).
    let refused = ringmaster_api::limits::violations(&sc.spec, &ctx.settings.policy);
    let ds_ref = ObjectRef::new(&id.agent_name()).within(ns);
    let live_ds = ctx.daemon_sets.get(&ds_ref);
    if refused.is_empty() {
        let excluded = scheduling::excluded_nodes(sc, cluster_refs.iter().copied(), &node_refs);
        // Before the DaemonSet: its pods mount the token Secret.
        ctx.read_access
            .ensure(&ctx.client, sc, id, ctx.settings.read_access_recheck)
            .await?;
        apply_fleet(sc, id, ctx, &excluded, live_ds.clone()).await?;
    } else {
        warn!(cluster = %id.key(), refused = %refused.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "), "spec refused: rendering nothing");
    }

    // Aggregate from the caches.
    let sns = ctx.storage_nodes_of(id);
    let by_node: HashMap<String, &StorageNode> = sns
        .iter()
        .map(|s| (s.spec.node_name.clone(), s.as_ref()))
        .collect();
    let out = status::aggregate(&Inputs {
        cluster: sc,
        nodes: &node_refs,
        storage_nodes: &by_node,
        clusters: &cluster_refs,
        daemon_set: live_ds.as_deref(),
        refused: &refused,
        now: now(),
    });

    let write = if status::unchanged(sc.status.as_ref(), &out.status) {
        None
    } else {
        ctx.pacing.lock().unwrap().status_write(
            &me,
            sc.status.as_ref(),
            &out.status,
            Instant::now(),
        )
    };
    {
        let st = &out.status;
        let decision = match write {
            None => "unchanged",
            Some(Ok(())) => "write",
            Some(Err(_)) => "deferred",
        };
        debug!(cluster = %id.key(), generation = sc.metadata.generation.unwrap_or(0), storage_nodes = sns.len(), desired = st.desired, reporting = st.reporting, ready = st.ready, up_to_date = st.up_to_date, decision, "status computed");
    }
    let mut deferred = None;
    if let Some(Err(wait)) = write {
        deferred = Some(wait);
    } else if write.is_some() {
        write_status(ctx, sc, id, &out.status).await?;
        ctx.pacing
            .lock()
            .unwrap()
            .wrote(&me, &out.status, Instant::now());
        let st = &out.status;
        debug!(cluster = %id.key(), desired = st.desired, reporting = st.reporting, ready = st.ready, up_to_date = st.up_to_date, "status written");
        for t in &out.transitions {
            ctx.publish(sc, t).await;
        }
    }
    ctx.metrics
        .set_fleet(&id.key(), sc.metadata.generation.unwrap_or(0), &out.status);

    release_departed(sc, id, ctx, &sns).await?;
    withdraw_stale_claims(sc, id, ctx, &out.stale).await?;

    let changed = {
        let mut sel = ctx.selections.lock().unwrap();
        let prev = sel.insert(me.clone(), out.selected.clone());
        prev.as_ref() != Some(&out.selected)
    };
    if changed {
        ctx.requeue_others(&me);
    }
    // Nothing else wakes us when an agent falls silent: look again when a report expires.
    let next = out
        .recheck_after
        .map_or(ctx.settings.resync, |d| d.min(ctx.settings.resync));
    Ok(Action::requeue(deferred.map_or(next, |d| d.min(next))))
}

/// Take `ringmaster.io/ready` and `ringmaster.io/aio-tuned` off nodes whose report is too
/// old to trust (rebooted since, or agent silent): nobody vouches for them now, and a
/// reboot undid the tuning. Taint and io_uring labels stay (the taint only keeps pods
/// off). The agent puts the labels back on its next pass.
async fn withdraw_stale_claims(
    sc: &StorageCluster,
    id: &ClusterId,
    ctx: &Context,
    stale: &[(String, crate::staleness::Stale)],
) -> Result<()> {
    if stale.is_empty() {
        return Ok(());
    }
    let key = id.key();
    let nodes = ctx.nodes.state();
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    for (name, why) in stale {
        let Some(node) = nodes.iter().find(|n| n.name_any() == *name) else {
            continue;
        };
        let Some(p) = crate::staleness::claims_patch(node, &key) else {
            continue;
        };
        nodes_api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(p)?),
            )
            .await?;
        let note = format!(
            "node {name}: {}; removed its {} and {} labels until the agent reports again",
            why.explain(),
            keys::LABEL_READY,
            keys::LABEL_AIO_TUNED
        );
        info!(cluster = %key, node = %name, "{note}");
        ctx.publish(
            sc,
            &status::Transition {
                warning: true,
                reason: "NodeReportStale".into(),
                action: "Withdraw",
                node: Some(name.clone()),
                note,
            },
        )
        .await;
    }
    Ok(())
}

/// The agent fleet: ServiceAccount, ClusterRoleBinding, DaemonSet (off `excluded` nodes).
async fn apply_fleet(
    sc: &StorageCluster,
    id: &ClusterId,
    ctx: &Context,
    excluded: &BTreeSet<String>,
    live_ds: Option<Arc<DaemonSet>>,
) -> Result<()> {
    let ns = &id.namespace;
    let sa = render::service_account(sc, id);
    let live_sa = ctx
        .service_accounts
        .get(&ObjectRef::new(&id.agent_name()).within(ns));
    if ctx
        .apply_owned(Api::namespaced(ctx.client.clone(), ns), &sa, live_sa)
        .await?
    {
        info!(cluster = %id.key(), "applied ServiceAccount {}", id.agent_name());
    }
    let crb = render::cluster_role_binding(sc, id);
    let live_crb = ctx.bindings.get(&ObjectRef::new(&id.binding_name()));
    if ctx
        .apply_owned(Api::all(ctx.client.clone()), &crb, live_crb)
        .await?
    {
        info!(cluster = %id.key(), "applied ClusterRoleBinding {}", id.binding_name());
    }
    let ds = render::daemon_set(sc, id, &ctx.settings.render, excluded);
    if ctx
        .apply_owned(Api::namespaced(ctx.client.clone(), ns), &ds, live_ds)
        .await?
    {
        info!(cluster = %id.key(), pod_hash = %sc.spec.pod_hash(), "applied DaemonSet {}", id.agent_name());
    }
    Ok(())
}

/// Remove what the cluster `key`'s agent left on `node` (owned labels, annotations, our
/// taint); false when there was nothing. The patch is guarded by the resourceVersion: a
/// concurrent change fails this reconcile, which retries.
async fn remove_agent_marks(nodes_api: &Api<Node>, node: &Node, key: &str) -> Result<bool> {
    let Some(p) = finalizer::node_cleanup_patch(node, key) else {
        return Ok(false);
    };
    nodes_api
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(p)?),
        )
        .await?;
    Ok(true)
}

/// Nodes that left `spec.nodeSelector` lose their agent pod, and a SIGTERMed agent restores
/// nothing (a rolling update must not strip labels): remove the labels, annotations and
/// taint it left on them (a NoSchedule taint would otherwise keep every pod off a node that
/// is no longer a storage node) and delete their StorageNode. The raised sysctl stays, as
/// on any agent restart; its original is still on the node for a later restore.
async fn release_departed(
    sc: &StorageCluster,
    id: &ClusterId,
    ctx: &Context,
    sns: &[Arc<StorageNode>],
) -> Result<()> {
    let key = id.key();
    let reported: BTreeSet<String> = sns.iter().map(|s| s.spec.node_name.clone()).collect();
    let nodes = ctx.nodes.state();
    let departed = scheduling::departed(sc, &key, nodes.iter().map(|n| n.as_ref()), &reported);
    if departed.is_empty() {
        return Ok(());
    }
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let sn_api: Api<StorageNode> = Api::all(ctx.client.clone());
    for name in departed {
        let Some(node) = nodes.iter().find(|n| n.name_any() == name) else {
            continue;
        };
        let cleaned = remove_agent_marks(&nodes_api, node, &key).await?;
        let deleted = reported.contains(&name)
            && unless_gone(sn_api.delete(&name, &DeleteParams::default()).await)?;
        if !(cleaned || deleted) {
            continue;
        }
        let note = format!(
            "node {name} no longer matches spec.nodeSelector: its agent is gone, so the operator removed {}{}{}",
            if cleaned { "the Ringmaster labels, annotations and taint" } else { "" },
            if cleaned && deleted { " and " } else { "" },
            if deleted { "its StorageNode" } else { "" },
        );
        info!(cluster = %key, node = %name, "{note}");
        ctx.publish(
            sc,
            &status::Transition {
                warning: false,
                reason: reasons::NODE_RELEASED.into(),
                action: "Release",
                node: Some(name.clone()),
                note,
            },
        )
        .await;
    }
    Ok(())
}

/// `Ok(true)` when the call succeeded, `Ok(false)` when its object was already gone (404).
fn unless_gone<T>(r: kube::Result<T>) -> Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletion path: wait (bounded) for the agents to restore their nodes, clean what is
/// left, delete this cluster's StorageNodes and binding, release the finalizer. The
/// DaemonSet and ServiceAccount go with the StorageCluster (owner references).
async fn cleanup(sc: &StorageCluster, id: &ClusterId, ctx: &Context) -> Result<Action> {
    let me = cluster_ref(sc);
    if !sc.finalizers().iter().any(|f| f == keys::FINALIZER) {
        return Ok(Action::await_change());
    }
    let sns = ctx.storage_nodes_of(id);
    let node_names: HashSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    // Agents can only restore nodes that still exist.
    let pending: Vec<&str> = sns
        .iter()
        .filter(|sn| !status::restored(sn) && node_names.contains(&sn.spec.node_name))
        .map(|sn| sn.spec.node_name.as_str())
        .collect();
    let deleted_at = sc
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let timeout = ctx.settings.cleanup_timeout;
    let deadline =
        deleted_at + k8s_openapi::jiff::SignedDuration::try_from(timeout).unwrap_or_default();
    let now = now();
    if !pending.is_empty() && now < deadline {
        return wait_for_agents(sc, id, ctx, &pending, sns.len(), deadline, now).await;
    }
    let cleaned = remove_leftovers(sc, id, ctx, &sns).await?;
    let t = cleanup_transition(&pending, sns.len(), &cleaned, timeout);
    ctx.publish(sc, &t).await;
    if let Some(p) = finalizer::remove_patch(sc) {
        let api: Api<StorageCluster> = Api::namespaced(ctx.client.clone(), &id.namespace);
        let patch = Patch::Json::<()>(serde_json::from_value(p)?);
        unless_gone(
            api.patch(&sc.name_any(), &PatchParams::default(), &patch)
                .await,
        )?;
    }
    info!(cluster = %id.key(), "finalizer released: {}", t.note);
    ctx.metrics.forget_fleet(&id.key());
    ctx.selections.lock().unwrap().remove(&me);
    ctx.requeue_others(&me);
    Ok(Action::await_change())
}

/// Say on the status which agents are still restoring their nodes; come back by the deadline.
async fn wait_for_agents(
    sc: &StorageCluster,
    id: &ClusterId,
    ctx: &Context,
    pending: &[&str],
    agents: usize,
    deadline: Timestamp,
    now: Timestamp,
) -> Result<Action> {
    let mut st = sc.status.clone().unwrap_or_default();
    let mut sorted = pending.to_vec();
    sorted.sort();
    let c = status::condition(
        &st.conditions,
        cc::FINALIZING,
        true,
        reasons::WAITING_FOR_AGENTS,
        format!(
            "waiting for the agents on {} of {} nodes to restore them (Restored=True on their StorageNode): {}; leftovers are cleaned by the operator after {} (--cleanup-timeout {}s)",
            sorted.len(),
            agents,
            status::name_list(sorted.iter().copied()),
            deadline,
            ctx.settings.cleanup_timeout.as_secs()
        ),
        sc.metadata.generation,
        now,
    );
    set_condition(&mut st, c);
    if sc.status.as_ref() != Some(&st) {
        write_status(ctx, sc, id, &st).await?;
    }
    let left = deadline.duration_since(now).as_secs().max(1) as u64;
    Ok(Action::requeue(Duration::from_secs(left.min(5))))
}

/// Remove what the agents left: labels/annotations/taint on every node this cluster touched,
/// its StorageNodes and its ClusterRoleBinding. Returns the nodes that were cleaned.
async fn remove_leftovers(
    sc: &StorageCluster,
    id: &ClusterId,
    ctx: &Context,
    sns: &[Arc<StorageNode>],
) -> Result<Vec<String>> {
    let key = id.key();
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let ours: HashSet<&str> = sns.iter().map(|s| s.spec.node_name.as_str()).collect();
    let selected = ctx
        .selections
        .lock()
        .unwrap()
        .get(&cluster_ref(sc))
        .cloned()
        .unwrap_or_default();
    let mut cleaned = Vec::new();
    for node in ctx.nodes.state() {
        let name = node.name_any();
        let tagged = node.annotations().get(keys::CLUSTER_ANNOTATION) == Some(&key);
        if !(tagged || ours.contains(name.as_str()) || selected.contains(&name)) {
            continue;
        }
        if remove_agent_marks(&nodes_api, &node, &key).await? {
            cleaned.push(name);
        }
    }
    let sn_api: Api<StorageNode> = Api::all(ctx.client.clone());
    for sn in sns {
        unless_gone(
            sn_api
                .delete(&sn.name_any(), &DeleteParams::default())
                .await,
        )?;
    }
    let binding = id.binding_name();
    if ctx.bindings.get(&ObjectRef::new(&binding)).is_some() {
        let crb_api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
        unless_gone(crb_api.delete(&binding, &DeleteParams::default()).await)?;
    }
    Ok(cleaned)
}

/// The event that ends the cleanup: complete, or timed out naming the agents that did not
/// restore their nodes in time.
fn cleanup_transition(
    pending: &[&str],
    agents: usize,
    cleaned: &[String],
    timeout: Duration,
) -> status::Transition {
    let timed_out = !pending.is_empty();
    let note = format!(
        "{} of {} agents restored their nodes{}; operator removed leftover labels/taint on {} nodes{}",
        agents - pending.len(),
        agents,
        if timed_out {
            format!(
                " ({} did not within --cleanup-timeout {}s: {})",
                pending.len(),
                timeout.as_secs(),
                status::name_list(pending.iter().copied())
            )
        } else {
            String::new()
        },
        cleaned.len(),
        if cleaned.is_empty() {
            String::new()
        } else {
            format!(" ({})", status::name_list(cleaned.iter().map(String::as_str)))
        }
    );
    status::Transition {
        warning: timed_out,
        reason: if timed_out {
            reasons::CLEANUP_TIMED_OUT
        } else {
            reasons::CLEANUP_COMPLETE
        }
        .into(),
        action: "Cleanup",
        node: None,
        note,
    }
}

fn set_condition(
    st: &mut StorageClusterStatus,
    c: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    match st.conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => *x = c,
        None => st.conditions.push(c),
    }
}

/// Exponential backoff per cluster: 1 s, 2 s, 4 s … 5 min; reset by a success.
pub fn error_policy(sc: Arc<StorageCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            error: err.kind().into(),
        })
        .inc();
    let n = {
        let mut f = ctx.failures.lock().unwrap();
        let n = f.entry(cluster_ref(&sc)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(n);
    warn!(cluster = %sc.name_any(), error = %err, attempt = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Delay after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// Drop what the caches never need (managedFields, Node status) to keep memory flat.
fn slim<K: Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
}

/// Each watch backs off on its own (`default_backoff`) and its errors are logged here,
/// not passed on: the controller would otherwise put every trigger behind one shared
/// backoff, so after an API server restart six watches' errors would pause all of them
/// for tens of seconds.
fn log_errors<K>(
    what: &'static str,
    s: impl Stream<Item = Result<K, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>> {
    s.filter_map(move |r| {
        future::ready(match r {
            Ok(o) => Some(Ok(o)),
            Err(e) => {
                warn!(watch = what, error = %e, "watch failed; retrying with backoff");
                None
            }
        })
    })
}

/// Node events that can change a selection or a report's standing: created, deleted,
/// labels, taints or boot id changed. (Heartbeats and other status updates are dropped
/// here, so they cost nothing.)
fn selection_changes(
    events: impl Stream<Item = Result<watcher::Event<Node>, watcher::Error>>,
) -> impl Stream<Item = Result<Node, watcher::Error>> {
    let mut seen: HashMap<String, u64> = HashMap::new();
    events.flat_map(move |ev| {
        let fp = |n: &Node| {
            let mut h = DefaultHasher::new();
            n.labels().hash(&mut h);
            n.status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| &i.boot_id)
                .hash(&mut h);
            if let Some(t) = n.spec.as_ref().and_then(|s| s.taints.as_ref()) {
                for t in t {
                    (&t.key, &t.value, &t.effect).hash(&mut h);
                }
            }
            h.finish()
        };
        let out: Vec<Result<Node, watcher::Error>> = match ev {
            Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                let f = fp(&n);
                if seen.insert(n.name_any(), f) != Some(f) {
                    vec![Ok(n)]
                } else {
                    vec![]
                }
            }
            Ok(watcher::Event::Delete(n)) => {
                seen.remove(&n.name_any());
                vec![Ok(n)]
            }
            Ok(_) => vec![],
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(out)
    })
}

/// Build the controller with every watch and run it until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl future::Future<Output = ()> + Send + Sync + 'static,
) {
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        keys::LABEL_MANAGED_BY,
        keys::MANAGER_OPERATOR
    ));
    let (clusters_api, ds_api, sa_api): (Api<StorageCluster>, Api<DaemonSet>, Api<ServiceAccount>) =
        match &settings.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };

    let (requeue, requeue_rx) = mpsc::unbounded_channel();
    let (clusters, w_clusters) = reflector::store();
    let (gone_store, gone_requeue) = (clusters.clone(), requeue.clone());
    let cluster_stream = watcher(clusters_api, watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .reflect(w_clusters)
        .inspect(move |ev| {
            // A StorageCluster that is gone releases its nodes (it held them while its
            // finalizer ran): later clusters excluded from them may take them now.
            if let Ok(watcher::Event::Delete(gone)) = ev {
                for c in gone_store.state() {
                    if c.uid() != gone.uid() {
                        let _ = gone_requeue.send(cluster_ref(&c));
                    }
                }
            }
        })
        .applied_objects();

    let (nodes, w_nodes) = reflector::store();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|n: &mut Node| {
            slim(n);
            // Of the status only the boot id matters here: a reboot makes reports stale.
            let boot = n
                .status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.boot_id.clone())
                .filter(|b| !b.is_empty());
            n.status = boot.map(|boot_id| NodeStatus {
                node_info: Some(NodeSystemInfo {
                    boot_id,
                    ..Default::default()
                }),
                ..Default::default()
            });
        })
        .reflect(w_nodes);
    let node_stream = selection_changes(node_events);

    let (storage_nodes, w_sns) = reflector::store();
    let sn_stream = watcher(
        Api::<StorageNode>::all(client.clone()),
        watcher::Config::default().labels(keys::LABEL_STORAGENODE_CLUSTER_NAME),
    )
    .default_backoff()
    .modify(slim)
    .reflect(w_sns)
    .touched_objects();

    let (daemon_sets, w_ds) = reflector::store();
    let ds_stream = watcher(ds_api, managed.clone())
        .default_backoff()
        .modify(slim)
        .reflect(w_ds)
        .touched_objects();
    let (service_accounts, w_sa) = reflector::store();
    let sa_stream = watcher(sa_api, managed.clone())
        .default_backoff()
        .modify(slim)
        .reflect(w_sa)
        .touched_objects();
    let (bindings, w_crb) = reflector::store();
    let crb_stream = watcher(Api::<ClusterRoleBinding>::all(client.clone()), managed)
        .default_backoff()
        .modify(slim)
        .reflect(w_crb)
        .touched_objects();

    let reporter = Reporter {
        controller: keys::MANAGER_OPERATOR.into(),
        instance: Some(settings.instance.clone()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        metrics,
        clusters: clusters.clone(),
        nodes,
        storage_nodes,
        daemon_sets,
        service_accounts,
        bindings,
        selections: Mutex::default(),
        failures: Mutex::default(),
        requeue,
        pacing: Mutex::default(),
        read_access: Default::default(),
    });

    // Node → clusters that select it now, or selected it at their last reconcile.
    let node_ctx = Arc::clone(&ctx);
    let node_mapper = move |node: Node| {
        let name = node.name_any();
        let mut out: HashSet<ObjectRef<StorageCluster>> = node_ctx
            .clusters
            .state()
            .iter()
            .filter(|c| scheduling::selects(c, &node))
            .map(|c| cluster_ref(c))
            .collect();
        for (r, sel) in node_ctx.selections.lock().unwrap().iter() {
            if sel.contains(&name) {
                out.insert(r.clone());
            }
        }
        out
    };

    // Wait for every cache before the first reconcile: a status computed from a
    // half-filled cache would be wrong (and a wasted write).
    let stores = Arc::clone(&ctx);
    let ready = async move {
        let _ = futures::join!(
            stores.clusters.wait_until_ready(),
            stores.nodes.wait_until_ready(),
            stores.storage_nodes.wait_until_ready(),
            stores.daemon_sets.wait_until_ready(),
            stores.service_accounts.wait_until_ready(),
            stores.bindings.wait_until_ready(),
        );
        info!("caches synced");
    };

    let controller =
        Controller::for_stream(log_errors("storageclusters", cluster_stream), clusters)
            // No debounce (it would wait for a burst of reports to pause): `pacing`
            // spaces the reconciles of one cluster and its progress-only status writes.
            .with_config(ControllerConfig::default().concurrency(4))
            .owns_stream(log_errors("daemonsets", ds_stream))
            .owns_stream(log_errors("serviceaccounts", sa_stream))
            .watches_stream(log_errors("clusterrolebindings", crb_stream), |crb| {
                labelled_cluster(&crb)
            })
            .watches_stream(log_errors("storagenodes", sn_stream), |sn| {
                labelled_cluster(&sn)
            })
            .watches_stream(log_errors("nodes", node_stream), node_mapper)
            .reconcile_on(tokio_stream_from(requeue_rx))
            .graceful_shutdown_on(shutdown);

    // The controller polls its streams (so the caches fill) while reconciles wait.
    let ctx_for_run = Arc::clone(&ctx);
    let gate = ready.boxed().shared();
    controller
        .run(
            move |sc, ctx| {
                let gate = gate.clone();
                async move {
                    gate.await;
                    reconcile(sc, ctx).await
                }
            },
            error_policy,
            ctx_for_run,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(cluster = %obj, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let d: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    /// One error of each variant, every API status code included. The match has no
    /// wildcard: a new variant does not compile here until it has examples, and then its
    /// kinds must be in [`ERROR_KINDS`].
    fn errors_of_every_kind() -> Vec<Error> {
        let api = |code| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("m", "R")
                    .with_code(code)
                    .boxed(),
            ))
        };
        let mut all: Vec<Error> = (100..600).map(api).collect();
        all.push(Error::Kube(kube::Error::SerdeError(
            serde_json::from_str::<u8>("x").unwrap_err(),
        )));
        all.push(Error::Json(serde_json::from_str::<u8>("x").unwrap_err()));
        all.push(Error::NoNamespace("sc".into()));
        for e in &all {
            match e {
                Error::Kube(_) | Error::Json(_) | Error::NoNamespace(_) => {}
            }
        }
        all
    }

    #[test]
    fn error_kinds_lists_every_kind() {
        let kinds: std::collections::BTreeSet<&str> =
            errors_of_every_kind().iter().map(Error::kind).collect();
        let listed: std::collections::BTreeSet<&str> = ERROR_KINDS.into_iter().collect();
        assert_eq!(
            kinds, listed,
            "ERROR_KINDS must list exactly what Error::kind returns"
        );
    }
}
