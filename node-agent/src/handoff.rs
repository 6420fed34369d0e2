//! The two files the privileged agent (`run`) and the unprivileged reader (`reader`)
//! exchange through a shared state dir (an emptyDir in the pod, a temp dir in tests).
//!
//! - `config.json` (agent → reader): sizing and policy from the StorageCluster spec.
//! - `reader.json` (reader → agent): the io_uring verdict probed under the reader's own
//!   security context, and which worker mode runs.
//!
//! Files are written atomically (temp file + rename) so a reader never sees half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::HostFacts;
use crate::probe::UringProbe;

pub const CONFIG_FILE: &str = "config.json";
pub const READER_FILE: &str = "reader.json";

/// io_uring policy as the reader sees it (mirrors the API's `aio.ioUring`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Required,
    #[default]
    Preferred,
    Disabled,
}

/// Agent → reader.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReaderConfig {
    /// StorageCluster `metadata.generation` this config comes from.
    pub generation: i64,
    pub config_hash: String,
    pub max_events: u32,
    pub min_max_events: u32,
    pub workers: u32,
    pub policy: Policy,
    /// (name, host path) pairs served under `/v1/files/{name}/...`.
    pub data_dirs: Vec<(String, PathBuf)>,
    pub port: u16,
}

/// Reader → agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReaderReport {
    /// Generation of the config this report answers.
    pub generation: i64,
    pub config_hash: String,
    /// Facts as the reader sees them (its seccomp mode, its memlock limit).
    pub host: HostFacts,
    pub io_uring: UringProbe,
    /// `io_uring`, `pread` or `none`.
    pub worker_mode: String,
    pub worker_mode_reason: String,
    /// The HTTP read service is listening.
    pub serving: bool,
    /// RFC 3339 time of the probe.
    pub probed_at: String,
}

/// Write `value` as JSON to `dir/name` atomically.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Read `dir/name` as JSON; `Ok(None)` when it does not exist yet.
pub fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
) -> std::io::Result<Option<T>> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{name}: {e}"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
