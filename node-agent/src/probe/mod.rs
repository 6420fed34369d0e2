//! The io_uring and libaio probes and the errno classification behind the verdict.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Parameters: the ring the read workers will set up.
#[derive(Clone, Debug)]
pub struct ProbeParams {
    pub max_events: u32,
    pub min_max_events: u32,
    /// Directory for the temporary file read through the ring.
    pub scratch_dir: PathBuf,
}

/// Result of probing io_uring exactly as the read workers use it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct UringProbe {
    pub supported: bool,
    pub errno: Option<i32>,
    /// errno name: `ENOSYS`, `EPERM`, `EINVAL`, `ENOMEM`, ...
    pub reason: Option<String>,
    /// Cause and fix, for people.
    pub message: Option<String>,
    pub requested_entries: u32,
    /// Largest ring that worked (0 when none).
    pub ring_entries: u32,
    pub setup_flags: u32,
    pub opcodes: Vec<String>,
    pub read_verified: bool,
}

/// Probe io_uring (implemented by the host-side issue).
pub fn probe_io_uring(p: &ProbeParams) -> UringProbe {
    UringProbe {
        requested_entries: p.max_events,
        ..Default::default()
    }
}
