//! The two files the privileged agent (`run`) and the unprivileged reader (`reader`)
//! exchange through a shared state dir (an emptyDir in the pod, a temp dir in tests).
//!
//! - `config.json` (agent → reader): sizing and policy from the StorageCluster spec,
//!   stamped with the cluster's generation and config hash.
//! - `reader.json` (reader → agent): the io_uring verdict probed under the reader's own
//!   security context, which worker mode runs, and whether the read service listens —
//!   stamped with the generation/hash of the config it answers, so the agent knows
//!   whether the verdict is current.
//!
//! Both are written atomically (temp file + rename in the same dir), so neither side ever
//! sees half a file. Neither side needs the other's privileges: the reader only reads
//! `config.json` and writes `reader.json`; the agent the other way round.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ringmaster_ring::host::HostFacts;
use ringmaster_ring::probe::UringProbe;

pub const CONFIG_FILE: &str = "config.json";
pub const READER_FILE: &str = "reader.json";

pub use ringmaster_ring::io::Policy;

/// The worker pool's policy for the API's `aio.ioUring`.
pub fn policy(p: ringmaster_api::IoUringPolicy) -> Policy {
    match p {
        ringmaster_api::IoUringPolicy::Required => Policy::Required,
        ringmaster_api::IoUringPolicy::Preferred => Policy::Preferred,
        ringmaster_api::IoUringPolicy::Disabled => Policy::Disabled,
    }
}

pub use ringmaster_ring::io::WorkerMode;

/// Agent → reader.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReaderConfig {
    /// StorageCluster `metadata.generation` this config comes from.
    pub generation: i64,
    /// `StorageClusterSpec::config_hash()` of that spec.
    pub config_hash: String,
    /// Ring entries per worker the reader asks for (`aio.maxEvents`).
    pub max_events: u32,
    /// Smallest ring it may shrink to (`aio.minMaxEvents`).
    pub min_max_events: u32,
    /// Worker threads (`aio.workers`).
    pub workers: u32,
    pub policy: Policy,
    /// (name, host path) pairs served under `/v1/files/{name}/...`.
    pub data_dirs: Vec<(String, PathBuf)>,
    /// TCP port of the read service (`readService.port`); `reader --bind` overrides it.
    pub port: u16,
}

/// One configured data dir as the reader checked it, under its own uid, capabilities
/// and mount view (reader → agent, in [`ReaderReport::data_dirs`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DataDirCheck {
    /// `readService.dataDirs[].name`.
    pub name: String,
    /// The host path from the config (not where the pod mounts it), for messages.
    pub path: PathBuf,
    /// Exists, is a directory, and the reader may open and search it.
    pub available: bool,
    /// When unavailable: `NotFound`, `NotADirectory`, `PermissionDenied` or an errno name
    /// (see `ringmaster_api::data_dir_reasons`).
    #[serde(default)]
    pub reason: Option<String>,
    /// What the reader saw, naming the host path.
    #[serde(default)]
    pub message: Option<String>,
}

impl ReaderReport {
    /// The reader does what the config asks: serving, or deliberately not (worker mode
    /// `none` under `Required`, no data dirs configured, or none of them usable — the
    /// report says which and why).
    pub fn settled(&self) -> bool {
        self.serving
            || self.worker_mode == WorkerMode::Off
            || !self.service_configured
            || (!self.data_dirs.is_empty() && self.data_dirs.iter().all(|d| !d.available))
    }

    /// Every configured data dir is usable (vacuously true without data dirs).
    pub fn data_dirs_available(&self) -> bool {
        self.data_dirs.iter().all(|d| d.available)
    }

    /// Same content, ignoring the probe time (the reader rewrites `reader.json` only
    /// when this is false, so retries do not turn into StorageNode writes).
    pub fn same_content(&self, other: &ReaderReport) -> bool {
        let strip = |r: &ReaderReport| ReaderReport {
            probed_at: String::new(),
            ..r.clone()
        };
        strip(self) == strip(other)
    }

    /// The storage read path can run: workers usable and, when asked for, serving.
    pub fn usable(&self) -> bool {
        self.worker_mode != WorkerMode::Off && (self.serving || !self.service_configured)
    }
}

impl ReaderConfig {
    /// Whether `report` answers this config (same generation and hash).
    pub fn answered_by(&self, report: &ReaderReport) -> bool {
        report.generation == self.generation && report.config_hash == self.config_hash
    }
}

/// Reader → agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReaderReport {
    /// Generation of the config this report answers.
    pub generation: i64,
    /// Config hash of the config this report answers.
    pub config_hash: String,
    /// Facts as the reader sees them (its seccomp mode, its memlock limit).
    pub host: HostFacts,
    /// The io_uring probe, run in the reader's own security context.
    pub io_uring: UringProbe,
    /// `io_uring`, `pread` or `none` on the wire.
    pub worker_mode: WorkerMode,
    /// Why the workers run in that mode, for people.
    pub worker_mode_reason: String,
    /// The HTTP read service is listening.
    pub serving: bool,
    /// The config asks for a read service (`readService.dataDirs` not empty). Without data
    /// dirs the reader only probes: not serving is then deliberate, not a failure.
    #[serde(default)]
    pub service_configured: bool,
    /// Address the read service listens on, when serving.
    #[serde(default)]
    pub listen_addr: Option<String>,
    /// Why the read service is not serving when it should (e.g. bind failed).
    #[serde(default)]
    pub error: Option<String>,
    /// Each configured data dir as checked before starting the service, in config
    /// order. Only available ones are served. Empty from readers before this field.
    #[serde(default)]
    pub data_dirs: Vec<DataDirCheck>,
    /// RFC 3339 time of the probe.
    pub probed_at: String,
}

/// Write `value` as JSON to `dir/name` atomically.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Read `dir/name` as JSON; `Ok(None)` when it does not exist yet. A malformed file is
/// an `InvalidData` error naming the file.
pub fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
) -> std::io::Result<Option<T>> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(name).display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ReaderConfig {
        ReaderConfig {
            generation: 3,
            config_hash: "abc".into(),
            max_events: 512,
            min_max_events: 64,
            workers: 8,
            policy: Policy::Preferred,
            data_dirs: vec![("d0".into(), "/data/0".into())],
            port: 7480,
        }
    }

    #[test]
    fn round_trip_and_missing() {
        let dir = std::env::temp_dir().join(format!("rm-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_json::<ReaderConfig>(&dir, CONFIG_FILE)
            .unwrap()
            .is_none());
        write_json(&dir, CONFIG_FILE, &config()).unwrap();
        let back: ReaderConfig = read_json(&dir, CONFIG_FILE).unwrap().unwrap();
        assert_eq!(back, config());
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CONFIG_FILE)]);
        std::fs::write(dir.join(READER_FILE), b"{not json").unwrap();
        let err = read_json::<ReaderReport>(&dir, READER_FILE).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("reader.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn report_answers_only_its_config() {
        let c = config();
        let mut r = ReaderReport {
            generation: 3,
            config_hash: "abc".into(),
            host: HostFacts::default(),
            io_uring: UringProbe::default(),
            worker_mode: WorkerMode::Pread,
            worker_mode_reason: String::new(),
            serving: true,
            service_configured: true,
            listen_addr: None,
            error: None,
            data_dirs: vec![],
            probed_at: String::new(),
        };
        assert!(c.answered_by(&r));
        r.config_hash = "def".into();
        assert!(!c.answered_by(&r));
        r.config_hash = "abc".into();
        r.generation = 2;
        assert!(!c.answered_by(&r));
    }

    #[test]
    fn report_without_data_dirs_field_still_parses() {
        // A reader.json written before `data_dirs` existed.
        let old = r#"{"generation":1,"config_hash":"h","host":{},"io_uring":{},
            "worker_mode":"pread","worker_mode_reason":"","serving":true,"probed_at":"t"}"#;
        let r: ReaderReport = serde_json::from_str(old).unwrap();
        assert!(r.data_dirs.is_empty());
        assert!(r.data_dirs_available());
        let mut later = r.clone();
        later.probed_at = "u".into();
        assert!(r.same_content(&later));
        later.data_dirs.push(DataDirCheck {
            name: "d0".into(),
            path: "/x".into(),
            available: false,
            reason: Some("NotFound".into()),
            message: None,
        });
        assert!(!r.same_content(&later));
        assert!(!later.data_dirs_available());
        // Configured, nothing usable, not serving: deliberately idle, so settled.
        later.serving = false;
        later.service_configured = true;
        assert!(later.settled());
    }
}
