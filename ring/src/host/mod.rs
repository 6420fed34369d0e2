//! Facts about this host and this process: kernel release, sysctls, seccomp mode,
//! RLIMIT_MEMLOCK, capabilities. Read-only except [`sysctl::write_u64`].

pub mod sysctl;

use serde::{Deserialize, Serialize};

/// Sysctl names the agent reads.
pub const AIO_MAX_NR: &str = "fs.aio-max-nr";
pub const AIO_NR: &str = "fs.aio-nr";
pub const IO_URING_DISABLED: &str = "kernel.io_uring_disabled";
pub const IO_URING_GROUP: &str = "kernel.io_uring_group";

/// Capability bit numbers (linux/capability.h).
pub const CAP_IPC_LOCK: u32 = 14;
pub const CAP_SYS_ADMIN: u32 = 21;

/// What `check` and the StorageNode report about the host and the probing process.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
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
    /// Number of stacked seccomp filters (`Seccomp_filters:`, Linux >= 5.9).
    pub seccomp_filters: Option<u32>,
    /// Effective user id of this process.
    pub euid: u32,
}

impl HostFacts {
    /// The host unit tests start from (and change one fact at a time): kernel 6.18,
    /// io_uring allowed, no seccomp, 8 MiB RLIMIT_MEMLOCK, CAP_SYS_ADMIN and CAP_IPC_LOCK,
    /// fs.aio-max-nr 65536 with nothing in use.
    #[cfg(any(test, feature = "test-fixtures"))]
    pub fn healthy() -> Self {
        HostFacts {
            kernel_release: "6.18.0".into(),
            io_uring_disabled: Some(0),
            io_uring_group: Some(-1),
            seccomp_mode: "disabled".into(),
            memlock_bytes: Some(8 << 20),
            cap_sys_admin: true,
            cap_ipc_lock: true,
            aio_max_nr: 65_536,
            aio_nr: 0,
            ..Default::default()
        }
    }

    /// This process runs under a seccomp filter (a container runtime profile, a sandbox).
    pub fn seccomp_filtered(&self) -> bool {
        self.seccomp_mode == "filter"
    }
}

/// The facts could not be read (no /proc, or a kernel without libaio).
#[derive(thiserror::Error, Debug)]
pub enum HostError {
    #[error("cannot read /proc/self/status: {0}; is /proc mounted?")]
    Status(std::io::Error),
    #[error("/proc/self/status has no {0} line")]
    StatusField(&'static str),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
}

/// `Seccomp:` value → mode name.
pub fn seccomp_mode_name(v: &str) -> &'static str {
    match v.trim() {
        "0" => "disabled",
        "1" => "strict",
        "2" => "filter",
        _ => "unknown",
    }
}

/// The fields of /proc/self/status the facts need.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcStatus {
    pub seccomp_mode: &'static str,
    pub seccomp_filters: Option<u32>,
    pub cap_eff: u64,
}

/// Parse /proc/<pid>/status text.
pub fn parse_status(text: &str) -> Result<ProcStatus, HostError> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    let seccomp = field("Seccomp:").ok_or(HostError::StatusField("Seccomp:"))?;
    let cap_eff = field("CapEff:").ok_or(HostError::StatusField("CapEff:"))?;
    let cap_eff =
        u64::from_str_radix(&cap_eff, 16).map_err(|_| HostError::StatusField("CapEff:"))?;
    Ok(ProcStatus {
        seccomp_mode: seccomp_mode_name(&seccomp),
        seccomp_filters: field("Seccomp_filters:").and_then(|v| v.parse().ok()),
        cap_eff,
    })
}

/// RLIMIT_MEMLOCK soft limit; `None` = unlimited.
pub fn memlock_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Memlock).current
}

/// Gather the facts, failing if /proc or the aio sysctls cannot be read.
pub fn try_gather() -> Result<HostFacts, HostError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(HostError::Status)?;
    let st = parse_status(&status)?;
    let has = |bit: u32| st.cap_eff & (1u64 << bit) != 0;
    Ok(HostFacts {
        kernel_release: rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned(),
        io_uring_disabled: sysctl::read_opt_i64(IO_URING_DISABLED)?,
        io_uring_group: sysctl::read_opt_i64(IO_URING_GROUP)?,
        seccomp_mode: st.seccomp_mode.to_string(),
        memlock_bytes: memlock_limit(),
        cap_sys_admin: has(CAP_SYS_ADMIN),
        cap_ipc_lock: has(CAP_IPC_LOCK),
        aio_max_nr: sysctl::read_u64(AIO_MAX_NR)?,
        aio_nr: sysctl::read_u64(AIO_NR)?,
        seccomp_filters: st.seccomp_filters,
        euid: rustix::process::geteuid().as_raw(),
    })
}

/// Gather the facts; fields that cannot be read keep their defaults (`seccomp_mode`
/// becomes `unknown`). Use [`try_gather`] to see why.
pub fn gather() -> HostFacts {
    try_gather().unwrap_or_else(|e| {
        tracing::warn!("host facts incomplete: {e}");
        let mut f = HostFacts {
            kernel_release: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            seccomp_mode: "unknown".into(),
            memlock_bytes: memlock_limit(),
            euid: rustix::process::geteuid().as_raw(),
            ..Default::default()
        };
        if let Ok(st) = std::fs::read_to_string("/proc/self/status")
            .map_err(HostError::Status)
            .and_then(|s| parse_status(&s))
        {
            f.seccomp_mode = st.seccomp_mode.into();
            f.seccomp_filters = st.seccomp_filters;
            f.cap_sys_admin = st.cap_eff & (1 << CAP_SYS_ADMIN) != 0;
            f.cap_ipc_lock = st.cap_eff & (1 << CAP_IPC_LOCK) != 0;
        }
        f.io_uring_disabled = sysctl::read_opt_i64(IO_URING_DISABLED).ok().flatten();
        f.io_uring_group = sysctl::read_opt_i64(IO_URING_GROUP).ok().flatten();
        f.aio_max_nr = sysctl::read_u64(AIO_MAX_NR).unwrap_or(0);
        f.aio_nr = sysctl::read_u64(AIO_NR).unwrap_or(0);
        f
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcat\nUid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n\
        CapPrm:\t000001ffffffffff\nCapEff:\t0000000000204000\nCapBnd:\t000001ffffffffff\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\n";

    #[test]
    fn parses_seccomp_and_capabilities() {
        let st = parse_status(STATUS).unwrap();
        assert_eq!(st.seccomp_mode, "filter");
        assert_eq!(st.seccomp_filters, Some(3));
        // 0x204000 = bits 14 (CAP_IPC_LOCK) and 21 (CAP_SYS_ADMIN).
        assert_eq!(st.cap_eff, (1 << CAP_IPC_LOCK) | (1 << CAP_SYS_ADMIN));
    }

    #[test]
    fn seccomp_modes() {
        assert_eq!(seccomp_mode_name("0"), "disabled");
        assert_eq!(seccomp_mode_name("1"), "strict");
        assert_eq!(seccomp_mode_name("2"), "filter");
        assert_eq!(seccomp_mode_name("x"), "unknown");
    }

    #[test]
    fn missing_fields_are_errors() {
        assert!(matches!(
            parse_status("Name:\tx\n"),
            Err(HostError::StatusField("Seccomp:"))
        ));
    }

    #[test]
    fn gathers_this_process() {
        let f = try_gather().expect("facts of this process");
        let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(f.kernel_release, uname.trim());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let st = parse_status(&status).unwrap();
        assert_eq!(f.seccomp_mode, st.seccomp_mode);
        assert_eq!(f.cap_sys_admin, st.cap_eff & (1 << CAP_SYS_ADMIN) != 0);
        assert_eq!(f.memlock_bytes, memlock_limit());
        assert_eq!(
            f.io_uring_disabled.is_some(),
            std::path::Path::new("/proc/sys/kernel/io_uring_disabled").exists()
        );
    }
}
