//! `StorageCluster`: what a user asks for (which nodes, how the read workers are sized,
//! how the node is tuned) and the operator's aggregated view of every node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Desired state of a Ringmaster storage cluster: the nodes that take part, how the
/// storage service's read workers are sized, and how each node is tuned and labelled.
/// Every field is optional; `spec: {}` is a valid cluster with the defaults shown.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ringmaster.io",
    version = "v1alpha1",
    kind = "StorageCluster",
    namespaced,
    shortname = "stc",
    status = "StorageClusterStatus",
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desired"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Supported","type":"integer","jsonPath":".status.ioUringSupported"}"#,
    printcolumn = r#"{"name":"Unsupported","type":"integer","jsonPath":".status.ioUringUnsupported"}"#,
    printcolumn = r#"{"name":"Up-To-Date","type":"integer","jsonPath":".status.upToDate"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StorageClusterSpec {
    /// Only nodes with all of these labels take part (empty: every node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the agent pods, so they can run on tainted storage nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The node agent's container resources (its image is the admin's: `--agent-image`).
    #[serde(default)]
    pub agent: AgentSpec,
    /// Read-worker sizing: ring size, worker threads, processes per node, io_uring policy.
    #[serde(default)]
    pub aio: AioSpec,
    /// How the agent handles `fs.aio-max-nr` on each node.
    #[serde(default)]
    pub sysctl: SysctlSpec,
    /// What happens to nodes where io_uring is unsupported: `Label` only, or also `Taint`
    /// them `ringmaster.io/io-uring-unsupported:NoSchedule`.
    #[serde(default)]
    pub unsupported_nodes: UnsupportedNodesPolicy,
    /// The agent's HTTP range-read service over the node's data directories.
    #[serde(default)]
    pub read_service: ReadServiceSpec,
    /// Seccomp profile the read workers (and so the io_uring probe) run under.
    #[serde(default)]
    pub seccomp: SeccompSpec,
}

/// Agent container settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.image)").message("spec.agent.image is no longer accepted: the cluster admin sets the agent image (chart value agent.image, operator flag --agent-image); remove the field").field_path(".image").reason(Reason::FieldValueForbidden))]
pub struct AgentSpec {
    /// Refused (kept in the schema only to say so): the agent runs as uid 0 (not privileged,
    /// every capability dropped) with host directories mounted, so its image is the cluster
    /// admin's choice (operator flag `--agent-image`), never a StorageCluster's. The operator
    /// ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources of the agent containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Agent image the operator uses when the admin names none (`--agent-image`).
pub const DEFAULT_AGENT_IMAGE: &str = "ghcr.io/ringmaster-io/ringmaster-agent:0.1.0";

/// Whether the read workers need io_uring.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IoUringPolicy {
    /// io_uring must work; nodes where it does not are unsupported and the cluster is Degraded.
    Required,
    /// Use io_uring where it works, fall back to the pread thread pool elsewhere.
    #[default]
    Preferred,
    /// Never use io_uring; the read workers use the pread pool.
    Disabled,
}

/// Read-worker sizing (3FS `AioReadWorker`: each of `workers` threads has a libaio
/// context and an io_uring ring of `maxEvents` entries).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.workers * self.maxEvents * self.processesPerNode <= 1073741824").message("spec.aio: workers × maxEvents × processesPerNode (the libaio events a node's storage processes open) must be at most 1073741824: lower spec.aio.workers, spec.aio.maxEvents or spec.aio.processesPerNode").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("self.minMaxEvents <= self.maxEvents").message("spec.aio.minMaxEvents must not exceed spec.aio.maxEvents: lower minMaxEvents or raise maxEvents").field_path(".minMaxEvents").reason(Reason::FieldValueInvalid))]
pub struct AioSpec {
    /// Ring entries and libaio events per worker thread (io_uring allows 1..32768).
    #[serde(default = "default_max_events")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_events: u32,
    /// Smallest ring the agent may shrink to when `maxEvents` cannot be set up (EINVAL/ENOMEM).
    #[serde(default = "default_min_max_events")]
    #[schemars(range(min = 1, max = 32768))]
    pub min_max_events: u32,
    /// Read worker threads per storage process.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = 1024))]
    pub workers: u32,
    /// Storage processes per node; each opens `workers × maxEvents` libaio events.
    #[serde(default = "default_processes")]
    #[schemars(range(min = 1, max = 256))]
    pub processes_per_node: u32,
    /// `Required`, `Preferred` (fall back to pread) or `Disabled`.
    #[serde(default)]
    pub io_uring: IoUringPolicy,
}

fn default_max_events() -> u32 {
    512
}
fn default_min_max_events() -> u32 {
    64
}
fn default_workers() -> u32 {
    8
}
fn default_processes() -> u32 {
    1
}

impl Default for AioSpec {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            min_max_events: default_min_max_events(),
            workers: default_workers(),
            processes_per_node: default_processes(),
            io_uring: IoUringPolicy::default(),
        }
    }
}

/// `Enforce` raises `fs.aio-max-nr`; `Verify` only reports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SysctlMode {
    /// Raise `fs.aio-max-nr` to the required value (never lower it) and re-apply on drift.
    #[default]
    Enforce,
    /// Only check and report; never write.
    Verify,
}

/// Node sysctl handling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SysctlSpec {
    /// Floor for `fs.aio-max-nr`: the agent never sets less than this (at most 2^30).
    #[serde(default = "default_aio_max_nr")]
    #[schemars(range(min = 0, max = 1073741824))]
    pub aio_max_nr: u64,
    /// `Enforce` (raise it) or `Verify` (report only).
    #[serde(default)]
    pub mode: SysctlMode,
    /// Also write `/etc/sysctl.d/60-ringmaster.conf` so the value survives a reboot.
    #[serde(default)]
    pub persist: bool,
    /// Put back the original `fs.aio-max-nr` when this StorageCluster is deleted.
    #[serde(default)]
    pub restore_on_delete: bool,
}

fn default_aio_max_nr() -> u64 {
    1_048_576
}

impl Default for SysctlSpec {
    fn default() -> Self {
        Self {
            aio_max_nr: default_aio_max_nr(),
            mode: SysctlMode::default(),
            persist: false,
            restore_on_delete: false,
        }
    }
}

/// What to do with nodes where io_uring is unsupported.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UnsupportedNodesPolicy {
    /// Label them `ringmaster.io/io-uring=unsupported` (use nodeAffinity to avoid them).
    #[default]
    Label,
    /// Label them and taint them `ringmaster.io/io-uring-unsupported:NoSchedule`.
    Taint,
}

/// The agent's HTTP range-read service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadServiceSpec {
    /// TCP port of `GET /v1/files/{dataDir}/{path}`.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Host directories served, each under a short name. Names must be unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 64))]
    pub data_dirs: Vec<DataDir>,
    /// Pods that may reach the read port, rendered as a NetworkPolicy on the agent pods
    /// (`<cluster>-agent`). Empty (the default): only pods in this StorageCluster's own
    /// namespace. Each entry works like a NetworkPolicy peer: `podSelector` alone selects
    /// pods in this namespace, `namespaceSelector` alone every pod of the namespaces it
    /// selects, both together the selected pods of the selected namespaces. Where the CNI
    /// does not enforce NetworkPolicy this is no barrier; reads still need the bearer token
    /// of the `<cluster>-read-token` Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_clients: Vec<ReadClient>,
    /// Limits of the read service on each node: range and response sizes, requests and
    /// connections at once, timeouts, the open-file cache. A change rolls no pod: the reader
    /// restarts its read service in place (in-flight reads finish first; new connections
    /// are refused until it listens again).
    #[serde(default)]
    pub limits: ReadServiceLimits,
}

/// A range is read as the whole 4 KiB blocks around it (O_DIRECT): the response memory it
/// needs is at most its length plus this much.
pub const RANGE_ROUNDING_BYTES: u64 = 8192;
/// Responses over this many bytes may hold at most half of `maxResponseBytes` together.
pub const LARGE_RESPONSE_BYTES: u64 = 1 << 20;
/// Largest `maxRangeBytes` (the service's own bound).
pub const MAX_RANGE_BYTES: u64 = 1 << 30;
/// Largest `maxResponseBytes` (the service's own bound).
pub const MAX_RESPONSE_BYTES: u64 = 1 << 40;
/// Largest `maxConcurrent`, `maxConnections` and `openFileCache.entries`.
pub const MAX_LIMIT_COUNT: u32 = 65536;
/// Largest `headerReadTimeoutSeconds` and `writeTimeoutSeconds`.
pub const MAX_TIMEOUT_SECONDS: u64 = 3600;
/// Largest `openFileCache.validMilliseconds`.
pub const MAX_OPEN_FILE_VALID_MILLISECONDS: u64 = 3_600_000;

/// Limits of the read service (the `ringmaster-agent serve` flags of the same names). The
/// defaults are the service's own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxResponseBytes >= self.maxRangeBytes + 8192").message("spec.readService.limits.maxResponseBytes must be at least spec.readService.limits.maxRangeBytes + 8192 (a range is read as whole 4 KiB blocks): raise maxResponseBytes or lower maxRangeBytes").field_path(".maxResponseBytes").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("self.maxRangeBytes <= 1048576 || self.maxResponseBytes >= 2 * (self.maxRangeBytes + 8192)").message("spec.readService.limits.maxResponseBytes must be at least 2 × (spec.readService.limits.maxRangeBytes + 8192) when maxRangeBytes is over 1048576 (responses over 1 MiB may hold only half of maxResponseBytes together): raise maxResponseBytes or lower maxRangeBytes").field_path(".maxResponseBytes").reason(Reason::FieldValueInvalid))]
pub struct ReadServiceLimits {
    /// Largest range served in one request, in bytes (larger ones get 400; so does a
    /// request without `Range` for a larger file). At most 1 GiB.
    #[serde(default = "default_max_range_bytes")]
    #[schemars(range(min = 1, max = MAX_RANGE_BYTES))]
    pub max_range_bytes: u64,
    /// Requests served at once per node; more get 503 with `Retry-After: 1`.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = MAX_LIMIT_COUNT))]
    pub max_concurrent: u32,
    /// Client connections open at once per node; more wait in the kernel's listen backlog.
    /// Each is a file descriptor of the reader container.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = MAX_LIMIT_COUNT))]
    pub max_connections: u32,
    /// Bytes of response bodies held in memory at once per node; a request that does not
    /// fit gets 503. Responses over 1 MiB may hold half of it together. At least
    /// `maxRangeBytes + 8192` (twice that when `maxRangeBytes` is over 1 MiB), at most
    /// 1 TiB; keep it well below the container's memory limit.
    #[serde(default = "default_max_response_bytes")]
    #[schemars(range(min = RANGE_ROUNDING_BYTES + 1, max = MAX_RESPONSE_BYTES))]
    pub max_response_bytes: u64,
    /// Seconds a client has to send a complete request head before its connection is
    /// closed; also the longest a keep-alive connection may sit idle.
    #[serde(default = "default_header_read_timeout_seconds")]
    #[schemars(range(min = 1, max = MAX_TIMEOUT_SECONDS))]
    pub header_read_timeout_seconds: u64,
    /// Seconds a response write may make no progress (the client reads nothing) before
    /// the connection is reset and what the request held is freed.
    #[serde(default = "default_write_timeout_seconds")]
    #[schemars(range(min = 1, max = MAX_TIMEOUT_SECONDS))]
    pub write_timeout_seconds: u64,
    /// Open files kept for reuse across requests.
    #[serde(default)]
    pub open_file_cache: OpenFileCacheSpec,
}

/// The read service's cache of open files: a hit costs no open, stat or close.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenFileCacheSpec {
    /// Open files kept per node (0: off, every request opens its file). Each is a file
    /// descriptor of the reader container.
    #[serde(default = "default_open_file_cache_entries")]
    #[schemars(range(min = 0, max = MAX_LIMIT_COUNT))]
    pub entries: u32,
    /// Milliseconds a cached open file is reused before its path is opened again: the
    /// longest a replaced or deleted file is still served (0: off).
    #[serde(default = "default_open_file_cache_valid_milliseconds")]
    #[schemars(range(min = 0, max = MAX_OPEN_FILE_VALID_MILLISECONDS))]
    pub valid_milliseconds: u64,
}

fn default_max_range_bytes() -> u64 {
    16 << 20
}
fn default_max_concurrent() -> u32 {
    256
}
fn default_max_connections() -> u32 {
    1024
}
fn default_max_response_bytes() -> u64 {
    128 << 20
}
fn default_header_read_timeout_seconds() -> u64 {
    30
}
fn default_write_timeout_seconds() -> u64 {
    30
}
fn default_open_file_cache_entries() -> u32 {
    1024
}
fn default_open_file_cache_valid_milliseconds() -> u64 {
    1000
}

impl Default for ReadServiceLimits {
    fn default() -> Self {
        Self {
            max_range_bytes: default_max_range_bytes(),
            max_concurrent: default_max_concurrent(),
            max_connections: default_max_connections(),
            max_response_bytes: default_max_response_bytes(),
            header_read_timeout_seconds: default_header_read_timeout_seconds(),
            write_timeout_seconds: default_write_timeout_seconds(),
            open_file_cache: OpenFileCacheSpec::default(),
        }
    }
}

impl Default for OpenFileCacheSpec {
    fn default() -> Self {
        Self {
            entries: default_open_file_cache_entries(),
            valid_milliseconds: default_open_file_cache_valid_milliseconds(),
        }
    }
}

impl ReadServiceLimits {
    /// The CRD's rules again (the schema ranges and the two CEL rules), for a spec the API
    /// server did not check (a CRD installed before these fields): the first problem, naming
    /// the field and the fix.
    pub fn check(&self) -> Result<(), String> {
        let f = "spec.readService.limits";
        let in_range = |name: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "{f}.{name} is {v}: it must be between {min} and {max}"
                ))
            }
        };
        let count = u64::from(MAX_LIMIT_COUNT);
        in_range("maxRangeBytes", self.max_range_bytes, 1, MAX_RANGE_BYTES)?;
        in_range("maxConcurrent", self.max_concurrent.into(), 1, count)?;
        in_range("maxConnections", self.max_connections.into(), 1, count)?;
        in_range(
            "maxResponseBytes",
            self.max_response_bytes,
            RANGE_ROUNDING_BYTES + 1,
            MAX_RESPONSE_BYTES,
        )?;
        in_range(
            "headerReadTimeoutSeconds",
            self.header_read_timeout_seconds,
            1,
            MAX_TIMEOUT_SECONDS,
        )?;
        in_range(
            "writeTimeoutSeconds",
            self.write_timeout_seconds,
            1,
            MAX_TIMEOUT_SECONDS,
        )?;
        in_range(
            "openFileCache.entries",
            self.open_file_cache.entries.into(),
            0,
            count,
        )?;
        in_range(
            "openFileCache.validMilliseconds",
            self.open_file_cache.valid_milliseconds,
            0,
            MAX_OPEN_FILE_VALID_MILLISECONDS,
        )?;
        let (range, response) = (self.max_range_bytes, self.max_response_bytes);
        let largest = range + RANGE_ROUNDING_BYTES;
        if response < largest {
            return Err(format!(
                "{f}.maxResponseBytes ({response}) must be at least {f}.maxRangeBytes + \
                 {RANGE_ROUNDING_BYTES} ({largest}; a range is read as whole 4 KiB blocks): raise \
                 maxResponseBytes or lower maxRangeBytes"
            ));
        }
        if range > LARGE_RESPONSE_BYTES && response < 2 * largest {
            return Err(format!(
                "{f}.maxResponseBytes ({response}) must be at least 2 × ({f}.maxRangeBytes + \
                 {RANGE_ROUNDING_BYTES}) ({}) when maxRangeBytes is over {LARGE_RESPONSE_BYTES}: \
                 responses over 1 MiB may hold only half of maxResponseBytes together; raise \
                 maxResponseBytes or lower maxRangeBytes",
                2 * largest
            ));
        }
        Ok(())
    }
}

/// Pods allowed to reach the read service (a NetworkPolicy peer without `ipBlock`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.namespaceSelector) || has(self.podSelector)").message("spec.readService.allowedClients[]: set namespaceSelector, podSelector or both (e.g. podSelector: {matchLabels: {app: storage}})").reason(Reason::FieldValueRequired))]
pub struct ReadClient {
    /// Namespaces whose pods may read (`{}`: every namespace). Unset: this StorageCluster's
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods that may read, in the namespaces above (`{}`: every pod). Unset: every pod of
    /// those namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

fn default_port() -> u16 {
    7480
}

impl Default for ReadServiceSpec {
    fn default() -> Self {
        Self {
            port: default_port(),
            data_dirs: Vec::new(),
            allowed_clients: Vec::new(),
            limits: ReadServiceLimits::default(),
        }
    }
}

/// A host directory served by the read service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataDir {
    /// Short name used in URLs (`/v1/files/{name}/...`): lowercase letters, digits and '-'.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// Absolute host path, e.g. `/srv/storage/data0`. The reader is given its parent,
    /// read-only: the parent must lie under a data dir root the admin allows, and may not
    /// be `/` nor be, lie under or contain a system directory (`/etc`, `/proc`, `/var/lib/kubelet`, ...).
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')").message("spec.readService.dataDirs[].hostPath must be an absolute path without '..', e.g. /srv/storage/data0").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("self.matches('^(/[^/]+)+$') && !self.contains('/./') && !self.endsWith('/.')").message("spec.readService.dataDirs[].hostPath must be a clean absolute path below a parent other than / (no '.', '//' or trailing '/'), e.g. /srv/storage/data0").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new(crate::limits::host_path_parent_rule()).message(crate::limits::host_path_parent_message().as_str()).reason(Reason::FieldValueForbidden))]
    #[schemars(length(min = 1, max = 1024))]
    pub host_path: String,
}

/// Seccomp profile kinds for the reader container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SeccompType {
    /// The container runtime's default profile (denies io_uring on Docker ≥ 25 / containerd ≥ 2.0).
    #[default]
    RuntimeDefault,
    /// No seccomp filtering.
    Unconfined,
    /// A profile file on the node, relative to the kubelet's seccomp dir (Ringmaster ships
    /// `ringmaster/io-uring.json`: RuntimeDefault plus io_uring).
    Localhost,
}

/// Seccomp profile of the read workers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Localhost' ? (has(self.localhostProfile) && size(self.localhostProfile) > 0) : !has(self.localhostProfile)").message("spec.seccomp.localhostProfile is required when spec.seccomp.type is Localhost (e.g. ringmaster/io-uring.json) and must be unset otherwise").field_path(".localhostProfile").reason(Reason::FieldValueRequired))]
pub struct SeccompSpec {
    /// `RuntimeDefault`, `Unconfined` or `Localhost`.
    #[serde(default, rename = "type")]
    pub type_: SeccompType,
    /// Profile path relative to the kubelet's seccomp dir; only with `type: Localhost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_profile: Option<String>,
}

/// The shipped Localhost profile (RuntimeDefault plus io_uring), relative to the kubelet seccomp dir.
pub const SHIPPED_SECCOMP_PROFILE: &str = "ringmaster/io-uring.json";

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageClusterStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Nodes selected by `nodeSelector`.
    #[serde(default)]
    pub desired: i32,
    /// Selected nodes whose agent wrote a StorageNode.
    #[serde(default)]
    pub reporting: i32,
    /// Nodes whose `fs.aio-max-nr` is at least the required value.
    #[serde(default)]
    pub tuned: i32,
    /// Nodes where io_uring works as the read workers use it.
    #[serde(default)]
    pub io_uring_supported: i32,
    /// Nodes where it does not.
    #[serde(default)]
    pub io_uring_unsupported: i32,
    /// Nodes ready to run the storage service.
    #[serde(default)]
    pub ready: i32,
    /// Nodes whose agent applied the current spec generation.
    #[serde(default)]
    pub up_to_date: i32,
    /// Selected nodes whose report is too old to trust: no agent heartbeat for
    /// [`STALE_AFTER_HEARTBEATS`] heartbeat intervals, or the node booted again since the
    /// report. Counted as unknown: neither ready, tuned nor probed.
    #[serde(default)]
    pub stale: i32,
    /// Unsupported nodes, sorted by name, at most [`MAX_UNSUPPORTED_LISTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported_nodes: Vec<UnsupportedNode>,
    /// Hash of the agent-relevant spec currently rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// A StorageNode whose `heartbeatTime` is older than this many `heartbeatSeconds` is stale.
pub const STALE_AFTER_HEARTBEATS: i64 = 3;

/// How many unsupported nodes the status lists (the counts are always complete).
pub const MAX_UNSUPPORTED_LISTED: usize = 50;

/// One node where io_uring does not work.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct UnsupportedNode {
    /// Node name.
    pub name: String,
    /// errno name, e.g. `ENOSYS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// errno number, e.g. 38.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

impl StorageClusterSpec {
    /// Hash of everything in the spec; agents hot-reload it, and the DaemonSet
    /// template carries [`StorageClusterSpec::pod_hash`] for what needs a restart.
    pub fn config_hash(&self) -> String {
        short_hash(&serde_json::to_vec(self).expect("spec serializes"))
    }

    /// Hash of the fields that change the agent pods themselves (resources,
    /// seccomp, port, data dirs, selection); only these roll the DaemonSet.
    pub fn pod_hash(&self) -> String {
        // Who may read is the NetworkPolicy's business, not the pods'. The limits reach the
        // reader through its config, which restarts the service in place; left out of the
        // JSON altogether, so the hash of a spec from before them is what it was.
        let mut read_service = self.read_service.clone();
        read_service.allowed_clients.clear();
        let mut read_service = serde_json::to_value(&read_service).expect("spec serializes");
        if let Some(o) = read_service.as_object_mut() {
            o.remove("limits");
        }
        let v = serde_json::json!({
            "resources": self.agent.resources,
            "seccomp": self.seccomp,
            "readService": read_service,
            "persist": self.sysctl.persist,
        });
        short_hash(&serde_json::to_vec(&v).expect("json serializes"))
    }
}

fn short_hash(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_gets_defaults() {
        let s: StorageClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(s.aio.max_events, 512);
        assert_eq!(s.aio.min_max_events, 64);
        assert_eq!(s.aio.workers, 8);
        assert_eq!(s.aio.io_uring, IoUringPolicy::Preferred);
        assert_eq!(s.sysctl.aio_max_nr, 1_048_576);
        assert_eq!(s.read_service.port, 7480);
        assert_eq!(s.seccomp.type_, SeccompType::RuntimeDefault);
        let l = &s.read_service.limits;
        assert_eq!(l.max_range_bytes, 16 << 20);
        assert_eq!(l.max_concurrent, 256);
        assert_eq!(l.max_connections, 1024);
        assert_eq!(l.max_response_bytes, 128 << 20);
        assert_eq!(l.header_read_timeout_seconds, 30);
        assert_eq!(l.write_timeout_seconds, 30);
        assert_eq!(l.open_file_cache.entries, 1024);
        assert_eq!(l.open_file_cache.valid_milliseconds, 1000);
        assert_eq!(l.check(), Ok(()), "the defaults pass their own rules");
    }

    #[test]
    fn limits_default_field_by_field_and_round_trip() {
        // A spec written before `limits` existed, and one that sets a single limit.
        let old: StorageClusterSpec = serde_json::from_value(serde_json::json!({
            "readService": {"port": 9000, "dataDirs": [{"name": "d0", "hostPath": "/srv/d0"}]}
        }))
        .unwrap();
        assert_eq!(old.read_service.limits, ReadServiceLimits::default());
        let some: ReadServiceSpec = serde_json::from_value(serde_json::json!({
            "limits": {"maxRangeBytes": 4096, "openFileCache": {"entries": 0}}
        }))
        .unwrap();
        let l = &some.limits;
        assert_eq!(l.max_range_bytes, 4096);
        assert_eq!(l.open_file_cache.entries, 0);
        assert_eq!(l.open_file_cache.valid_milliseconds, 1000);
        assert_eq!(l.max_response_bytes, 128 << 20);
        let json = serde_json::to_value(&some).unwrap();
        assert_eq!(json["limits"]["openFileCache"]["validMilliseconds"], 1000);
        assert_eq!(json["limits"]["headerReadTimeoutSeconds"], 30);
        let back: ReadServiceSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, some);
    }

    #[test]
    fn limits_check_follows_the_crd_rules() {
        let with = |range: u64, response: u64| ReadServiceLimits {
            max_range_bytes: range,
            max_response_bytes: response,
            ..Default::default()
        };
        // At most 1 MiB: the response budget needs one range plus its 4 KiB rounding.
        assert_eq!(with(1 << 20, (1 << 20) + 8192).check(), Ok(()));
        let e = with(1 << 20, (1 << 20) + 8191).check().unwrap_err();
        assert!(
            e.contains("spec.readService.limits.maxResponseBytes (1056767)")
                && e.contains("spec.readService.limits.maxRangeBytes + 8192 (1056768")
                && e.contains("raise maxResponseBytes or lower maxRangeBytes"),
            "{e}"
        );
        // Over 1 MiB: twice that, since large responses share half the budget.
        let range = (1 << 20) + 1;
        assert_eq!(with(range, 2 * (range + 8192)).check(), Ok(()));
        let e = with(range, 2 * (range + 8192) - 1).check().unwrap_err();
        assert!(
            e.contains("2 × (spec.readService.limits.maxRangeBytes + 8192) (2113538)")
                && e.contains("over 1048576"),
            "{e}"
        );
        let e = ReadServiceLimits {
            max_connections: 0,
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert_eq!(
            e,
            "spec.readService.limits.maxConnections is 0: it must be between 1 and 65536"
        );
        let off = ReadServiceLimits {
            open_file_cache: OpenFileCacheSpec {
                entries: 0,
                valid_milliseconds: 0,
            },
            ..Default::default()
        };
        assert_eq!(off.check(), Ok(()), "a cache turned off is fine");
    }

    #[test]
    fn pod_hash_ignores_sizing() {
        let a = StorageClusterSpec::default();
        let mut b = a.clone();
        b.aio.max_events = 1024;
        assert_eq!(a.pod_hash(), b.pod_hash());
        assert_ne!(a.config_hash(), b.config_hash());
        b.agent.image = Some("other:1".into());
        assert_eq!(a.pod_hash(), b.pod_hash(), "the image field is ignored");
        b.read_service.allowed_clients.push(ReadClient::default());
        assert_eq!(a.pod_hash(), b.pod_hash(), "allowedClients rolls no pod");
        b.seccomp.type_ = SeccompType::Localhost;
        assert_ne!(a.pod_hash(), b.pod_hash());
    }

    #[test]
    fn limits_change_the_config_hash_but_roll_no_pod() {
        let a = StorageClusterSpec::default();
        let mut b = a.clone();
        b.read_service.limits.max_range_bytes = 4096;
        assert_ne!(a.config_hash(), b.config_hash(), "the reader must see it");
        assert_eq!(a.pod_hash(), b.pod_hash(), "limits roll no pod");
        let mut c = a.clone();
        c.read_service.limits.open_file_cache.entries = 0;
        assert_ne!(a.config_hash(), c.config_hash());
        assert_eq!(a.pod_hash(), c.pod_hash());
        // Pod hashes of specs from before `limits` (pinned from that version): an upgrade
        // of the operator must not roll every agent DaemonSet.
        assert_eq!(a.pod_hash(), "62683feb2d9b58c1");
        let mut d = a.clone();
        d.read_service.data_dirs.push(DataDir {
            name: "d0".into(),
            host_path: "/srv/d0".into(),
        });
        d.read_service.port = 9000;
        assert_eq!(d.pod_hash(), "d6407908acc8c19a");
    }
}
