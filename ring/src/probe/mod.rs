//! The io_uring and libaio probes and the errno classification behind the verdict.
//!
//! - [`errno`] the classification table (errno → cause and fix), pure and unit-tested
//! - [`uring`] the io_uring probe: setup, shrink, opcodes, registered buffer, verified read
//! - [`aio`]   the libaio probe: one `io_setup(max_events)`

pub mod aio;
pub mod errno;
pub mod uring;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use aio::{probe_libaio, AioProbe};

use crate::host::HostFacts;

/// Parameters: the ring the read workers will set up.
#[derive(Clone, Debug)]
pub struct ProbeParams {
    pub max_events: u32,
    pub min_max_events: u32,
    /// Directory for the temporary file read through the ring.
    pub scratch_dir: PathBuf,
}

/// Result of probing io_uring exactly as the read workers use it.
///
/// When the requested ring failed but a smaller one worked, `supported` is true,
/// `ring_entries < requested_entries`, and `errno`/`reason`/`message` describe the
/// failure at the requested size.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct UringProbe {
    pub supported: bool,
    pub errno: Option<i32>,
    /// errno name: `ENOSYS`, `EPERM`, `EINVAL`, `ENOMEM`, ...
    pub reason: Option<String>,
    /// Cause, for people (what failed, with which errno, and why on this host).
    pub message: Option<String>,
    pub requested_entries: u32,
    /// Largest ring that worked (0 when none).
    pub ring_entries: u32,
    pub setup_flags: u32,
    /// Read opcodes the kernel supports (of READ, READ_FIXED, READV).
    pub opcodes: Vec<String>,
    pub read_verified: bool,
    /// What to do about the failure.
    pub fix: Option<String>,
    /// Probe step the errno comes from: `setup`, `register_buffers`, `opcodes`, `read`.
    pub failed_step: Option<String>,
    /// Ring sizes tried, largest first.
    pub tried_entries: Vec<u32>,
    /// Bytes registered with IORING_REGISTER_BUFFERS (`ring_entries × 4 KiB`).
    pub registered_buffer_bytes: u64,
    /// Read opcodes the workers need that the kernel lacks.
    pub missing_opcodes: Vec<String>,
    /// `O_DIRECT` or `buffered`: how the verification read was done.
    pub read_mode: Option<String>,
    /// The probe itself could not run (e.g. no writable scratch dir); not a verdict.
    pub probe_error: Option<String>,
}

/// Probe io_uring with this process's facts (see [`uring::probe`]).
pub fn probe_io_uring(p: &ProbeParams) -> UringProbe {
    uring::probe(p, &crate::host::gather())
}

/// Probe io_uring, explaining failures with facts already gathered.
pub fn probe_io_uring_with(p: &ProbeParams, facts: &HostFacts) -> UringProbe {
    uring::probe(p, facts)
}
