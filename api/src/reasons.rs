//! Condition and Event reasons: the one place their wire values are written. The operator,
//! the agent and the end-to-end tests all name them from here. Values are CamelCase, as
//! Kubernetes expects for `reason`; a value once shipped is an API and does not change.
//!
//! Condition *types* live in [`crate::node_conditions`] and [`crate::cluster_conditions`];
//! a data dir's own `reason` in [`crate::data_dir_reasons`].

// --- StorageCluster `Ready` (operator) ---
/// No node matches `spec.nodeSelector` (or none is schedulable for the agent).
pub const NO_NODES_SELECTED: &str = "NoNodesSelected";
/// Every selected node is Ready.
pub const ALL_NODES_READY: &str = "AllNodesReady";
/// Some selected nodes are not Ready.
pub const NODES_NOT_READY: &str = "NodesNotReady";
/// Event: the cluster became Ready.
pub const READY: &str = "Ready";

// --- StorageCluster `Progressing` (operator; `RolloutComplete` is also an event) ---
pub const CREATING_AGENTS: &str = "CreatingAgents";
pub const ROLLING_OUT: &str = "RollingOut";
pub const WAITING_FOR_REPORTS: &str = "WaitingForReports";
pub const APPLYING_CONFIG: &str = "ApplyingConfig";
pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";

// --- StorageCluster `Degraded` (operator; each is also the warning event's reason) ---
/// The spec breaks a static limit or the admin's settings: nothing is rendered (also
/// `Progressing=False`).
pub const SPEC_REFUSED: &str = "SpecRefused";
/// A node is claimed by two StorageClusters.
pub const NODE_CONFLICT: &str = "NodeConflict";
/// Reports too old to trust (agent silent, node booted again): those nodes count as unknown.
pub const REPORTS_STALE: &str = "ReportsStale";
/// Also the agent's event and the StorageNode `IoUringSupported=False` fallback.
pub const IO_URING_UNSUPPORTED: &str = "IoUringUnsupported";
/// Also the StorageNode `DataDirsReady=False` reason and the agent's event.
pub const DATA_DIR_UNAVAILABLE: &str = "DataDirUnavailable";
pub const TUNING_FAILED: &str = "TuningFailed";
/// `Degraded=False`.
pub const AS_EXPECTED: &str = "AsExpected";
/// Event: `Degraded` went back to False.
pub const RECOVERED: &str = "Recovered";

// --- StorageCluster `Finalizing` and the finalizer's events (operator) ---
pub const WAITING_FOR_AGENTS: &str = "WaitingForAgents";
pub const CLEANUP_COMPLETE: &str = "CleanupComplete";
pub const CLEANUP_TIMED_OUT: &str = "CleanupTimedOut";
/// Event: a node left `spec.nodeSelector` and the operator removed what its agent left.
pub const NODE_RELEASED: &str = "NodeReleased";

// --- StorageNode `Tuned` (agent) ---
pub const SUFFICIENT: &str = "Sufficient";
pub const BELOW_REQUIRED: &str = "BelowRequired";
pub const READ_ONLY_SYSCTL: &str = "ReadOnlySysctl";
/// Also the agent's warning event.
pub const TUNE_FAILED: &str = "TuneFailed";
/// Event: `fs.aio-max-nr` is what the cluster needs.
pub const TUNED: &str = "Tuned";

// --- StorageNode `IoUringSupported` (agent) ---
pub const SUPPORTED: &str = "Supported";
/// Fallback when the reader reported no errno name.
pub const UNSUPPORTED: &str = "Unsupported";
/// Event: io_uring works (again) under the reader's security context.
pub const IO_URING_SUPPORTED: &str = "IoUringSupported";
/// Also the agent's warning event.
pub const READER_REPORT_INVALID: &str = "ReaderReportInvalid";
/// The agent could not write `config.json` for the reader, which keeps running its last
/// config (also the agent's warning event).
pub const CONFIG_HANDOFF_FAILED: &str = "ConfigHandoffFailed";
/// The reader has not answered the current config yet (also `DataDirsReady`, `Ready`).
pub const WAITING_FOR_READER: &str = "WaitingForReader";

// --- StorageNode `DataDirsReady` (agent) ---
pub const NO_DATA_DIRS: &str = "NoDataDirs";
pub const ALL_AVAILABLE: &str = "AllAvailable";
/// Event: every data dir is usable again.
pub const DATA_DIRS_AVAILABLE: &str = "DataDirsAvailable";
/// Per-dir reasons in the condition message and events.
pub const DATA_DIR_MISSING: &str = "DataDirMissing";
pub const DATA_DIR_NOT_A_DIRECTORY: &str = "DataDirNotADirectory";
pub const DATA_DIR_PERMISSION_DENIED: &str = "DataDirPermissionDenied";

// --- StorageNode `Ready` (agent) ---
pub const SERVING: &str = "Serving";
pub const NO_READ_SERVICE: &str = "NoReadService";
pub const NOT_SERVING: &str = "NotServing";
pub const NOT_TUNED: &str = "NotTuned";
/// `aio.ioUring: Required` and io_uring is unavailable: nothing serves, on purpose.
pub const IO_URING_REQUIRED: &str = "IoUringRequired";

// --- StorageNode `Restored` and the agent's cleanup events ---
pub const RESTORED: &str = "Restored";
pub const RESTORE_FAILED: &str = "RestoreFailed";
/// Event: the agent's Node is gone.
pub const NODE_NOT_FOUND: &str = "NodeNotFound";
