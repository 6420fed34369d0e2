//! Every key Ringmaster writes on objects it does not own (Nodes) or uses to find its own.
//! Agents touch only keys under [`PREFIX`] and record which they own (NFD-style) in
//! [`OWNED_LABELS_ANNOTATION`], so they never remove a label somebody else set.

/// Prefix of every Ringmaster-owned label, annotation and taint key.
pub const PREFIX: &str = "ringmaster.io/";

/// `supported` | `unsupported`: whether the read workers' io_uring setup works on the node.
pub const LABEL_IO_URING: &str = "ringmaster.io/io-uring";
/// errno name (`ENOSYS`, `EPERM`, …), present only when io_uring is unsupported.
pub const LABEL_IO_URING_REASON: &str = "ringmaster.io/io-uring-reason";
/// `true` | `false`: `fs.aio-max-nr` is at least what the cluster needs.
pub const LABEL_AIO_TUNED: &str = "ringmaster.io/aio-tuned";
/// `true` | `false`: the node can run the storage service (tuned, probed, reader serving).
pub const LABEL_READY: &str = "ringmaster.io/ready";

/// Label values.
pub const SUPPORTED: &str = "supported";
pub const UNSUPPORTED: &str = "unsupported";

/// Taint put on nodes where io_uring is unsupported when `unsupportedNodes: Taint`.
pub const TAINT_IO_URING_UNSUPPORTED: &str = "ringmaster.io/io-uring-unsupported";

/// Comma-separated list of the label keys the agent owns on this Node.
pub const OWNED_LABELS_ANNOTATION: &str = "ringmaster.io/owned-labels";
/// Cluster (`namespace/name`) whose agent manages this Node.
pub const CLUSTER_ANNOTATION: &str = "ringmaster.io/cluster";
/// Hash of the agent-relevant spec, on the DaemonSet pod template (rolls pods when it changes).
pub const CONFIG_HASH_ANNOTATION: &str = "ringmaster.io/config-hash";

/// Finalizer the operator holds on a StorageCluster until agents cleaned up.
pub const FINALIZER: &str = "ringmaster.io/cleanup";

/// Labels on each StorageNode naming the StorageCluster it reports to (label values cannot hold '/').
pub const LABEL_STORAGENODE_CLUSTER_NAMESPACE: &str = "ringmaster.io/cluster-namespace";
pub const LABEL_STORAGENODE_CLUSTER_NAME: &str = "ringmaster.io/cluster-name";

/// Ports of the agent pod: the privileged agent's health/metrics endpoint. The reader
/// serves on `spec.readService.port` (reads, `/metrics`, `/healthz`, `/readyz`).
pub const AGENT_HTTP_PORT: u16 = 9464;
/// Shared state dir (emptyDir) between the agent and reader containers.
pub const POD_STATE_DIR: &str = "/run/ringmaster";
/// Under [`POD_STATE_DIR`]: the agent's handoff dir (its own emptyDir, read-only in the reader).
pub const HANDOFF_AGENT_DIR: &str = "agent";
/// Under [`POD_STATE_DIR`]: the reader's handoff dir (its own emptyDir, read-only in the agent).
pub const HANDOFF_READER_DIR: &str = "reader";
/// Host dir where the agent keeps what must survive it (original sysctls, aio.toml).
pub const HOST_STATE_DIR: &str = "/var/lib/ringmaster";

/// Labels on objects the operator creates.
pub const LABEL_CLUSTER_NAME: &str = "ringmaster.io/cluster";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Server-side apply field managers.
pub const MANAGER_OPERATOR: &str = "ringmaster-operator";
pub const MANAGER_AGENT: &str = "ringmaster-agent";

/// True when `key` is a Ringmaster node label (what an agent may own).
pub fn is_ringmaster_key(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// The node labels an agent may own, in a stable order.
pub const AGENT_LABELS: [&str; 4] = [
    LABEL_IO_URING,
    LABEL_IO_URING_REASON,
    LABEL_AIO_TUNED,
    LABEL_READY,
];

/// Hash of what the operator last applied, on each object it renders: the operator
/// compares it with a fresh render and writes only when it differs (no hot loop).
pub const RENDERED_HASH_ANNOTATION: &str = "ringmaster.io/rendered-hash";
/// `app.kubernetes.io/name` of the agent pods and the objects around them.
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// ClusterRole the agents' ServiceAccounts are bound to (shipped by the chart, not the operator).
pub const AGENT_CLUSTER_ROLE: &str = "ringmaster-agent";
