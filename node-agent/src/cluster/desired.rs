//! What a StorageCluster asks of this node's agent, derived from its spec: the reader's
//! config, the sysctl sizing, and the label/taint policy. Pure; no I/O.

use std::path::PathBuf;

use ringmaster_api::sizing::Sizing;
use ringmaster_api::{StorageCluster, StorageClusterSpec, SysctlMode, UnsupportedNodesPolicy};

use crate::handoff::ReaderConfig;

/// What this cluster asks of the node's `fs.aio-max-nr`: how much, and how to apply it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysctlTuning {
    /// `spec.aio` sizing and the `sysctl.aioMaxNr` floor.
    pub sizing: Sizing,
    pub mode: SysctlMode,
    pub persist: bool,
}

/// Everything the agent applies for one StorageCluster generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// `namespace/name`.
    pub cluster: String,
    pub uid: String,
    pub generation: i64,
    pub config_hash: String,
    pub reader: ReaderConfig,
    pub sysctl: SysctlTuning,
    pub unsupported_nodes: UnsupportedNodesPolicy,
    pub restore_on_delete: bool,
    /// `metadata.deletionTimestamp` is set: clean up instead of applying.
    pub deleting: bool,
}

impl Desired {
    pub fn from_cluster(sc: &StorageCluster) -> Self {
        let ns = sc.metadata.namespace.clone().unwrap_or_default();
        let name = sc.metadata.name.clone().unwrap_or_default();
        let spec: &StorageClusterSpec = &sc.spec;
        let generation = sc.metadata.generation.unwrap_or(0);
        let config_hash = spec.config_hash();
        Desired {
            cluster: format!("{ns}/{name}"),
            uid: sc.metadata.uid.clone().unwrap_or_default(),
            generation,
            config_hash: config_hash.clone(),
            reader: ReaderConfig {
                generation,
                config_hash,
                max_events: spec.aio.max_events,
                min_max_events: spec.aio.min_max_events.min(spec.aio.max_events),
                workers: spec.aio.workers,
                policy: crate::handoff::policy(spec.aio.io_uring),
                data_dirs: spec
                    .read_service
                    .data_dirs
                    .iter()
                    .map(|d| (d.name.clone(), PathBuf::from(&d.host_path)))
                    .collect(),
                port: spec.read_service.port,
                limits: spec.read_service.limits.clone(),
            },
            sysctl: SysctlTuning {
                sizing: Sizing::from_spec(&spec.aio, &spec.sysctl),
                mode: spec.sysctl.mode,
                persist: spec.sysctl.persist,
            },
            unsupported_nodes: spec.unsupported_nodes,
            restore_on_delete: spec.sysctl.restore_on_delete,
            deleting: sc.metadata.deletion_timestamp.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::Policy;

    fn cluster(yaml: &str) -> StorageCluster {
        let mut sc = StorageCluster::new("main", serde_yaml::from_str(yaml).unwrap());
        sc.metadata.namespace = Some("storage".into());
        sc.metadata.generation = Some(7);
        sc.metadata.uid = Some("u-1".into());
        sc
    }

    #[test]
    fn spec_maps_to_reader_config_and_sizing() {
        let d = Desired::from_cluster(&cluster(
            "aio: {maxEvents: 1024, workers: 32, processesPerNode: 2, ioUring: Required}\n\
             sysctl: {aioMaxNr: 4096, mode: Verify, restoreOnDelete: true}\n\
             unsupportedNodes: Taint\n\
             readService: {port: 9000, dataDirs: [{name: d0, hostPath: /data/0}], \
             limits: {maxRangeBytes: 4096, openFileCache: {entries: 0}}}",
        ));
        assert_eq!(d.cluster, "storage/main");
        assert_eq!(d.generation, 7);
        assert_eq!(d.reader.generation, 7);
        assert_eq!(d.reader.max_events, 1024);
        assert_eq!(d.reader.workers, 32);
        assert_eq!(d.reader.policy, Policy::Required);
        assert_eq!(d.reader.port, 9000);
        assert_eq!(d.reader.data_dirs, vec![("d0".into(), "/data/0".into())]);
        assert_eq!(d.reader.limits.max_range_bytes, 4096);
        assert_eq!(d.reader.limits.open_file_cache.entries, 0);
        assert_eq!(d.reader.limits.max_concurrent, 256, "unset: the default");
        assert_eq!(d.sysctl.mode, SysctlMode::Verify);
        assert_eq!(d.unsupported_nodes, UnsupportedNodesPolicy::Taint);
        assert!(d.restore_on_delete && !d.deleting);
        // 2 × 32 × 1024 = 65536 demand + 65536 headroom, above the 4096 floor.
        assert_eq!(d.sysctl.sizing.required(0), 131_072);
    }

    #[test]
    fn hash_follows_spec() {
        let a = Desired::from_cluster(&cluster("{}"));
        let b = Desired::from_cluster(&cluster("aio: {maxEvents: 256}"));
        assert_ne!(a.config_hash, b.config_hash);
        assert_eq!(a.reader.config_hash, a.config_hash);
        // A limit changes the hash the reader answers, so the agent waits for its answer.
        let c = Desired::from_cluster(&cluster("readService: {limits: {writeTimeoutSeconds: 5}}"));
        assert_ne!(a.config_hash, c.config_hash);
        assert_eq!(c.reader.limits.write_timeout_seconds, 5);
    }
}
