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
//! One directory per direction under `--state-dir`, so neither side ever writes where the
//! other reads from: `agent/` (config.json, agent.addr; written by the agent, mounted
//! read-only into the reader) and `reader/` (reader.json and the probe's scratch file;
//! written by the reader, mounted read-only into the agent). Files are written with
//! [`crate::safe_fs`] (O_EXCL temporary, fsync, rename, fsync dir), so nobody sees half a
//! file, and read as untrusted input: no symlink followed, regular files only, never a
//! blocking open, at most [`MAX_FILE_BYTES`].

use std::path::{Path, PathBuf};

use crate::safe_fs::Dir;

use serde::{Deserialize, Serialize};

use ringmaster_ring::host::HostFacts;
use ringmaster_ring::probe::UringProbe;

pub const CONFIG_FILE: &str = "config.json";
pub const READER_FILE: &str = "reader.json";
/// The agent's HTTP address, once bound (for people and tests).
pub const ADDR_FILE: &str = "agent.addr";
/// Subdirectory the agent writes and the reader only reads.
pub const AGENT_DIR: &str = ringmaster_api::keys::HANDOFF_AGENT_DIR;
/// Subdirectory the reader writes and the agent only reads.
pub const READER_DIR: &str = ringmaster_api::keys::HANDOFF_READER_DIR;
/// Largest handoff file either side reads. A report with a hundred data dirs and long
/// messages is tens of KiB; anything far larger is not a report.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

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
    /// `readService.limits` as the spec spells them (camelCase). Missing from a config
    /// written before them: the read service's defaults.
    #[serde(default)]
    pub limits: ringmaster_api::ReadServiceLimits,
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
    /// Boot id of the host when the reader probed (`crate::boot`). The agent ignores a
    /// report from another boot: the handoff dir outlives a reboot, the probe does not.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// The handoff root (`--state-dir`) with its two one-way subdirectories.
#[derive(Debug)]
pub struct Handoff {
    root: Dir,
}

impl Handoff {
    /// Open (creating when missing) the state dir; the path is the trusted flag.
    pub fn open(state_dir: &Path) -> std::io::Result<Handoff> {
        Ok(Handoff {
            root: Dir::create(state_dir)?,
        })
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// `agent/`. With `own`, created if missing and made 0755 (only root adds names to
    /// it, whatever mode the volume came with): the agent's call. Without, `Ok(None)`
    /// while it does not exist (the reader waiting for the agent).
    pub fn agent_dir(&self, own: bool) -> std::io::Result<Option<Dir>> {
        let d = match self.root.subdir(AGENT_DIR, own.then_some(0o755)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !own => return Ok(None),
            Err(e) => return Err(e),
        };
        if own {
            d.chmod(0o755)?;
        }
        Ok(Some(d))
    }

    /// `reader/`. With `own`, created if missing (the reader's call); without, `Ok(None)`
    /// while it does not exist (the agent before the reader's first report).
    pub fn reader_dir(&self, own: bool) -> std::io::Result<Option<Dir>> {
        match self.root.subdir(READER_DIR, own.then_some(0o755)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !own => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Write `value` as JSON to `dir/name`, atomically and durably.
pub fn write_json<T: Serialize>(dir: &Dir, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    dir.write_atomic(name, &bytes)
}

/// Read `dir/name` as JSON the other side wrote; `Ok(None)` when it does not exist yet.
/// A symlink, FIFO, device, oversized or malformed file is an `InvalidData` error naming
/// the file.
pub fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Dir,
    name: &str,
) -> std::io::Result<Option<T>> {
    match dir.read_untrusted(name, MAX_FILE_BYTES)? {
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.path().join(name).display()),
            )
        }),
        None => Ok(None),
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
            limits: ringmaster_api::ReadServiceLimits {
                max_range_bytes: 4096,
                ..Default::default()
            },
        }
    }

    #[test]
    fn config_without_limits_still_parses() {
        // A config.json written by an agent from before `limits`.
        let old = r#"{"generation":2,"config_hash":"h","max_events":512,"min_max_events":64,
            "workers":8,"policy":"preferred","data_dirs":[["d0","/data/0"]],"port":7480}"#;
        let c: ReaderConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.limits, ringmaster_api::ReadServiceLimits::default());
        assert_eq!(c.data_dirs, vec![("d0".into(), "/data/0".into())]);
        // What this agent writes carries them, and reads back the same.
        let text = serde_json::to_string(&config()).unwrap();
        assert!(
            text.contains(r#""limits":{"maxRangeBytes":4096,"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<ReaderConfig>(&text).unwrap(),
            config()
        );
    }

    #[test]
    fn round_trip_and_missing() {
        let path = std::env::temp_dir().join(format!("rm-handoff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let h = Handoff::open(&path).unwrap();
        assert!(h.agent_dir(false).unwrap().is_none());
        let agent = h.agent_dir(true).unwrap().unwrap();
        let dir = agent.path().to_path_buf();
        assert!(read_json::<ReaderConfig>(&agent, CONFIG_FILE)
            .unwrap()
            .is_none());
        write_json(&agent, CONFIG_FILE, &config()).unwrap();
        let back: ReaderConfig = read_json(&agent, CONFIG_FILE).unwrap().unwrap();
        assert_eq!(back, config());
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CONFIG_FILE)]);
        std::fs::write(dir.join(READER_FILE), b"{not json").unwrap();
        let err = read_json::<ReaderReport>(&agent, READER_FILE).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("reader.json"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "agent/ is writable by root only");
        assert!(h.reader_dir(false).unwrap().is_none());
        assert!(h.reader_dir(true).unwrap().is_some());
        std::fs::remove_dir_all(&path).unwrap();
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
            boot_id: None,
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
