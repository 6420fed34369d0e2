//! Facts about this host and this process: kernel release, sysctls, seccomp mode,
//! RLIMIT_MEMLOCK, capabilities. Read-only except [`sysctl::write`].

pub mod sysctl;

use serde::{Deserialize, Serialize};

/// What `check` and the StorageNode report about the host and the probing process.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HostFacts {
    pub kernel_release: String,
    /// `kernel.io_uring_disabled`, absent on kernels < 6.6.
    pub io_uring_disabled: Option<i64>,
    /// `kernel.io_uring_group`, absent on kernels < 6.6.
    pub io_uring_group: Option<i64>,
    /// `disabled`, `strict` or `filter` (from /proc/self/status `Seccomp:`).
    pub seccomp_mode: String,
    /// RLIMIT_MEMLOCK soft limit in bytes; `None` = unlimited.
    pub memlock_bytes: Option<u64>,
    pub cap_sys_admin: bool,
    pub cap_ipc_lock: bool,
    pub aio_max_nr: u64,
    pub aio_nr: u64,
}

/// Gather the facts (implemented by the host-side issue).
pub fn gather() -> HostFacts {
    HostFacts::default()
}
