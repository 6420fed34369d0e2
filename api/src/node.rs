//! `StorageNode`: one per Node, written by that node's agent. It is the node's truthful
//! report: kernel, io_uring verdict (probed under the readers' security context),
//! `fs.aio-max-nr`, worker mode, and which cluster generation it applied.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Identity of a node report. The agent sets it; users never need to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ringmaster.io",
    version = "v1alpha1",
    kind = "StorageNode",
    shortname = "stn",
    status = "StorageNodeStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"IO_Uring","type":"string","jsonPath":".status.ioUring.verdict"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.ioUring.reason"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.workerMode"}"#,
    printcolumn = r#"{"name":"AIO-Max-Nr","type":"integer","jsonPath":".status.aio.current"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Gen","type":"integer","jsonPath":".status.appliedGeneration"}"#,
    printcolumn = r#"{"name":"Kernel","type":"string","jsonPath":".status.kernel","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StorageNodeSpec {
    /// Name of the Node this report is about (also this object's name).
    pub node_name: String,
    /// The StorageCluster (`namespace/name`) whose agent writes this report.
    pub cluster: String,
}

/// The node agent's report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageNodeStatus {
    /// Kernel release (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// io_uring probe result, from the reader's security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_uring: Option<IoUringReport>,
    /// `fs.aio-max-nr` and `fs.aio-nr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aio: Option<AioReport>,
    /// `kernel.io_uring_disabled` (0, 1, 2), absent on kernels without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_uring_disabled: Option<i64>,
    /// RLIMIT_MEMLOCK of the reader in bytes (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memlock_bytes: Option<u64>,
    /// Seccomp mode the probe ran under: `disabled`, `strict` or `filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_mode: Option<String>,
    /// `io_uring`, `pread`, or `none` (Required policy and io_uring unavailable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_mode: Option<String>,
    /// Why the workers run in that mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_mode_reason: Option<String>,
    /// `metadata.generation` of the StorageCluster this report reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation: Option<i64>,
    /// Config hash of the StorageCluster spec the agent applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_config_hash: Option<String>,
    /// Settings handed to the storage service (also in `/var/lib/ringmaster/aio.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_settings: Option<ServiceSettings>,
    /// Each `spec.readService.dataDirs[]` entry as the reader checked it on this node
    /// (exists, is a directory, the reader may open and search it). Unavailable ones are
    /// not served; the others are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub data_dirs: Vec<DataDirReport>,
    /// `Tuned`, `IoUringSupported`, `DataDirsReady`, `Ready`, `Restored`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// When the node was last probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// The host's boot id when the agent wrote this report (`/proc/sys/kernel/random/boot_id`,
    /// the same value as the Node's `status.nodeInfo.bootID`). A report from an earlier
    /// boot says nothing about this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the agent last renewed this report (as a node renews its Lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// The agent renews `heartbeatTime` at least this often; the operator counts the report
    /// as stale after `STALE_AFTER_HEARTBEATS` (3) times this without a renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_seconds: Option<i64>,
}

/// io_uring probe result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IoUringReport {
    /// `supported` or `unsupported` (for printer columns).
    pub verdict: String,
    /// Whether io_uring works as the read workers use it.
    pub supported: bool,
    /// errno name when unsupported (`ENOSYS`, `EPERM`, `EINVAL`, `ENOMEM`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// errno number when unsupported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// What the errno means here and how to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ring entries requested (`aio.maxEvents`).
    #[serde(default)]
    pub requested_entries: u32,
    /// Ring entries achieved (may be smaller after shrinking; 0 when unsupported).
    #[serde(default)]
    pub ring_entries: u32,
    /// io_uring_setup flags used.
    #[serde(default)]
    pub setup_flags: u32,
    /// Opcodes probed and supported (e.g. `Read`, `ReadFixed`, `Readv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opcodes: Vec<String>,
    /// A real read completed through the ring.
    #[serde(default)]
    pub read_verified: bool,
}

/// One data dir as the reader found it on this node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataDirReport {
    /// `spec.readService.dataDirs[].name`.
    pub name: String,
    /// `spec.readService.dataDirs[].hostPath` the reader checked (the host path, not where
    /// the pod mounts it).
    pub host_path: String,
    /// The reader can open and search it, so it is served.
    pub available: bool,
    /// Why not, when unavailable: `NotFound`, `NotADirectory`, `PermissionDenied`, or the
    /// errno name (`ELOOP`, `EIO`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the reader saw, for people (names the host path and the reader's uid/gid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// [`DataDirReport::reason`] values the reader sets (anything else is an errno name).
pub mod data_dir_reasons {
    /// The path does not exist (`ENOENT`).
    pub const NOT_FOUND: &str = "NotFound";
    /// The path, or a component of it, is not a directory (`ENOTDIR`).
    pub const NOT_A_DIRECTORY: &str = "NotADirectory";
    /// The reader may not open or search it (`EACCES`, `EPERM`).
    pub const PERMISSION_DENIED: &str = "PermissionDenied";
}

/// Where a data dir sits in its StorageCluster, as conditions and events name it (the agent per
/// node, the operator across nodes): `spec.readService.dataDirs[1].hostPath`, or, once the
/// entry has left the spec (`index` is `None`), `dataDir d1 (no longer in
/// spec.readService.dataDirs)`.
pub fn data_dir_field(index: Option<usize>, name: &str) -> String {
    match index {
        Some(i) => format!("spec.readService.dataDirs[{i}].hostPath"),
        None => format!("dataDir {name} (no longer in spec.readService.dataDirs)"),
    }
}

/// `fs.aio-max-nr` bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AioReport {
    /// Value found before Ringmaster first raised it (what restore puts back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<u64>,
    /// What the cluster needs on this node.
    pub required: u64,
    /// Value now.
    pub current: u64,
    /// `fs.aio-nr`: events held by all processes now.
    pub aio_nr: u64,
    /// Whether `current >= required`.
    pub tuned: bool,
}

/// Verified settings for the storage service (3FS `[server.aio_read_worker]` names).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Ring/libaio events per worker that worked (`max_events`).
    pub max_events: u32,
    /// Worker threads (`num_threads`).
    pub num_threads: u32,
    /// Whether io_uring may be enabled (`enable_io_uring`).
    pub enable_io_uring: bool,
    /// libaio events still available under `fs.aio-max-nr`.
    pub aio_budget: u64,
}

/// Condition types on a StorageNode.
pub mod node_conditions {
    pub const TUNED: &str = "Tuned";
    pub const IO_URING_SUPPORTED: &str = "IoUringSupported";
    /// Every `spec.readService.dataDirs[]` entry is usable by the reader on this node.
    pub const DATA_DIRS_READY: &str = "DataDirsReady";
    pub const READY: &str = "Ready";
    pub const RESTORED: &str = "Restored";
}

/// Condition types on a StorageCluster.
pub mod cluster_conditions {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    /// Present while the StorageCluster is being deleted: the finalizer waits for agents
    /// to restore their nodes, then cleans leftovers itself.
    pub const FINALIZING: &str = "Finalizing";
}
