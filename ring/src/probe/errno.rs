//! The errno classification behind the verdict: for each errno that
//! io_uring or libaio setup returns, its name, the likely cause on *this* host (the host
//! facts narrow it down) and the fix. Pure functions, unit-tested.

use crate::host::HostFacts;

/// Largest ring `io_uring_setup` accepts without IORING_SETUP_CLAMP (IORING_MAX_ENTRIES).
pub const IORING_MAX_ENTRIES: u32 = 32_768;

/// Which step of the io_uring probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `io_uring_setup`.
    Setup,
    /// `IORING_REGISTER_BUFFERS`.
    RegisterBuffers,
    /// `IORING_REGISTER_PROBE` / required opcodes.
    Opcodes,
    /// Submitting or completing the verification read.
    Read,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Setup => "setup",
            Step::RegisterBuffers => "register_buffers",
            Step::Opcodes => "opcodes",
            Step::Read => "read",
        }
    }
}

/// An errno explained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// `ENOSYS`, `EPERM`, ...
    pub reason: String,
    /// Why this happens here.
    pub cause: String,
    /// What to do about it.
    pub fix: String,
    /// A smaller ring may work (EINVAL, ENOMEM during setup or buffer registration).
    pub shrinkable: bool,
}

/// Symbolic name of an errno (`errno 38` → `ENOSYS`).
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::ENOTDIR => "ENOTDIR",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ESTALE => "ESTALE",
        libc::ENODEV => "ENODEV",
        libc::ENXIO => "ENXIO",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EOVERFLOW => "EOVERFLOW",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

/// Parse an errno name (or number) back: `ENOSYS` → 38.
pub fn errno_from_name(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    (1..=133).find(|&e| errno_name(e).eq_ignore_ascii_case(s))
}

fn memlock_text(f: &HostFacts) -> String {
    match f.memlock_bytes {
        None => "unlimited".into(),
        Some(b) => format!("{b} bytes"),
    }
}

/// Explain an io_uring errno from `step` with `entries` ring entries.
pub fn classify_uring(errno: i32, step: Step, entries: u32, f: &HostFacts) -> Diagnosis {
    let filtered = f.seccomp_filtered();
    let d = |cause: String, fix: &str, shrinkable: bool| Diagnosis {
        reason: errno_name(errno),
        cause,
        fix: fix.to_string(),
        shrinkable,
    };
    match (errno, step) {
        (libc::ENOSYS, _) if filtered => d(
            "io_uring syscalls return ENOSYS under this process's seccomp filter (Podman/CRI-O \
             default profile, gVisor and other sandboxes do this)"
                .into(),
            "run the read workers with a seccomp profile that allows io_uring_setup, \
             io_uring_enter and io_uring_register (Ringmaster's Localhost profile \
             ringmaster/io-uring.json, or Unconfined), or outside the sandbox",
            false,
        ),
        (libc::ENOSYS, _) => d(
            format!(
                "kernel {} has no io_uring (built without CONFIG_IO_URING, older than 5.1, or \
                 a sandbox such as gVisor that does not implement it)",
                f.kernel_release
            ),
            "use a kernel with CONFIG_IO_URING=y (Linux >= 5.6 for the read opcodes), or set \
             aio.ioUring: Preferred so the read workers fall back to the pread pool",
            false,
        ),
        (libc::EPERM, _) if f.io_uring_disabled == Some(2) => d(
            "kernel.io_uring_disabled=2: io_uring is disabled for every process".into(),
            "sysctl -w kernel.io_uring_disabled=0 (or 1 with kernel.io_uring_group set to the \
             storage service's group), and persist it in /etc/sysctl.d",
            false,
        ),
        (libc::EPERM, _) if f.io_uring_disabled == Some(1) && !f.cap_sys_admin => d(
            format!(
                "kernel.io_uring_disabled=1: only processes with CAP_SYS_ADMIN or in \
                 kernel.io_uring_group ({}) may create rings, and this process has neither",
                match f.io_uring_group {
                    None | Some(-1) => "none set".to_string(),
                    Some(g) => format!("gid {g}"),
                }
            ),
            "set kernel.io_uring_group to a group the storage service runs in \
             (supplementalGroups), or sysctl -w kernel.io_uring_disabled=0",
            false,
        ),
        (libc::EPERM, _) if filtered => d(
            "io_uring syscalls are denied with EPERM by this process's seccomp filter (the \
             RuntimeDefault profile of Docker >= 25 and containerd >= 2.0 does this)"
                .into(),
            "run the read workers with a seccomp profile that allows io_uring (Ringmaster's \
             Localhost profile ringmaster/io-uring.json, or Unconfined)",
            false,
        ),
        (libc::EPERM | libc::EACCES, _) => d(
            "io_uring is denied by a security policy (LSM such as SELinux/AppArmor, or \
             kernel.io_uring_disabled)"
                .into(),
            "check the LSM audit log for io_uring denials and allow io_uring for the storage \
             service",
            false,
        ),
        (libc::EINVAL, Step::Setup) if entries > IORING_MAX_ENTRIES || entries == 0 => d(
            format!(
                "{entries} ring entries is outside what io_uring_setup accepts (1..={IORING_MAX_ENTRIES})"
            ),
            "set maxEvents (--max-events) to 32768 or less",
            true,
        ),
        (libc::EINVAL, Step::Setup) => d(
            format!("io_uring_setup rejected the parameters ({entries} entries): setup flags this kernel does not support"),
            "use a newer kernel or fewer setup flags; a smaller ring may work",
            true,
        ),
        (libc::EINVAL, Step::RegisterBuffers) => d(
            "IORING_REGISTER_BUFFERS rejected the buffer (larger than 1 GiB, or unsupported \
             memory)"
                .into(),
            "lower maxEvents (--max-events) so the registered buffer is smaller",
            true,
        ),
        (libc::ENOMEM, Step::Setup | Step::RegisterBuffers) => d(
            format!(
                "not enough locked memory for a {entries}-entry ring{}: RLIMIT_MEMLOCK is {}{} \
                 (without CAP_IPC_LOCK, registered buffers are charged to it, and so is the \
                 ring itself on kernels <= 5.11 and >= 6.14)",
                if step == Step::RegisterBuffers { " and its registered buffers" } else { "" },
                memlock_text(f),
                if f.cap_ipc_lock { "" } else { " and the process lacks CAP_IPC_LOCK" }
            ),
            "raise RLIMIT_MEMLOCK for the storage service (ulimit -l unlimited, systemd \
             LimitMEMLOCK=infinity, containerd/docker default ulimit memlock=-1) or grant \
             CAP_IPC_LOCK, or lower maxEvents",
            true,
        ),
        (libc::ENOMEM, _) => d(
            "the kernel ran out of memory for io_uring".into(),
            "free memory on the node or lower maxEvents",
            false,
        ),
        (libc::EMFILE | libc::ENFILE, _) => d(
            "out of file descriptors (a ring is a file)".into(),
            "raise RLIMIT_NOFILE (ulimit -n) or fs.file-max",
            false,
        ),
        (libc::EOPNOTSUPP, Step::Opcodes) => d(
            "the kernel's io_uring lacks opcodes the read workers use".into(),
            "use Linux >= 5.6 (IORING_OP_READ), or aio.ioUring: Preferred to fall back to pread",
            false,
        ),
        (libc::EINVAL, Step::Opcodes) => d(
            "the kernel does not support IORING_REGISTER_PROBE (Linux < 5.6)".into(),
            "use Linux >= 5.6, or aio.ioUring: Preferred to fall back to pread",
            false,
        ),
        (libc::EIO, Step::Read) => d(
            "the read through the ring returned wrong bytes or failed with an I/O error".into(),
            "check the kernel log (dmesg) for storage errors; report a kernel bug if the disk \
             is healthy",
            false,
        ),
        (_, Step::Read) => d(
            format!(
                "the verification read through the ring failed with {}",
                errno_name(errno)
            ),
            "check the scratch directory's filesystem and the kernel log (dmesg)",
            false,
        ),
        _ => d(
            format!("io_uring {} failed with {}", step.as_str(), errno_name(errno)),
            "see io_uring_setup(2) / io_uring_register(2) for this errno",
            false,
        ),
    }
}

/// Explain a libaio `io_setup(max_events)` errno.
pub fn classify_aio(errno: i32, max_events: u32, f: &HostFacts) -> Diagnosis {
    let d = |cause: String, fix: String| Diagnosis {
        reason: errno_name(errno),
        cause,
        fix,
        shrinkable: false,
    };
    match errno {
        libc::EAGAIN => d(
            format!(
                "io_setup({max_events}) would exceed fs.aio-max-nr: fs.aio-nr {} + {max_events} > \
                 fs.aio-max-nr {}",
                f.aio_nr, f.aio_max_nr
            ),
            "raise fs.aio-max-nr: ringmaster-agent tune (or sysctl -w fs.aio-max-nr=<required>)"
                .into(),
        ),
        libc::ENOSYS if f.seccomp_filtered() => d(
            "libaio syscalls return ENOSYS under this process's seccomp filter".into(),
            "allow io_setup/io_submit/io_getevents/io_destroy in the seccomp profile".into(),
        ),
        libc::ENOSYS => d(
            "kernel built without CONFIG_AIO".into(),
            "use a kernel with CONFIG_AIO=y".into(),
        ),
        libc::EPERM | libc::EACCES => d(
            "libaio syscalls are denied by a seccomp filter or security policy".into(),
            "allow io_setup/io_submit/io_getevents/io_destroy in the seccomp profile".into(),
        ),
        libc::EINVAL => d(
            format!("io_setup rejected {max_events} events (0 or too large)"),
            "set maxEvents (--max-events) to 32768 or less".into(),
        ),
        libc::ENOMEM => d(
            "not enough kernel memory for the aio context".into(),
            "free memory on the node or lower maxEvents".into(),
        ),
        _ => d(
            format!("io_setup failed with {}", errno_name(errno)),
            "see io_setup(2) for this errno".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in [
            libc::ENOSYS,
            libc::EPERM,
            libc::EINVAL,
            libc::ENOMEM,
            libc::EAGAIN,
        ] {
            assert_eq!(errno_from_name(&errno_name(e)), Some(e));
        }
        assert_eq!(errno_name(38), "ENOSYS");
        assert_eq!(errno_name(1), "EPERM");
        assert_eq!(errno_name(22), "EINVAL");
        assert_eq!(errno_name(12), "ENOMEM");
        assert_eq!(errno_name(11), "EAGAIN");
        assert_eq!(errno_name(9999), "errno 9999");
        assert_eq!(errno_from_name("enosys"), Some(38));
        assert_eq!(errno_from_name("12"), Some(12));
    }

    #[test]
    fn enosys_under_seccomp_blames_the_profile() {
        let f = HostFacts {
            seccomp_mode: "filter".into(),
            ..HostFacts::healthy()
        };
        let d = classify_uring(libc::ENOSYS, Step::Setup, 512, &f);
        assert_eq!(d.reason, "ENOSYS");
        assert!(d.cause.contains("seccomp"), "{}", d.cause);
        assert!(d.fix.contains("io-uring.json"), "{}", d.fix);
        assert!(!d.shrinkable);
    }

    #[test]
    fn enosys_without_seccomp_blames_the_kernel() {
        let d = classify_uring(libc::ENOSYS, Step::Setup, 512, &HostFacts::healthy());
        assert!(d.cause.contains("CONFIG_IO_URING"), "{}", d.cause);
        assert!(d.cause.contains("6.18.0"), "{}", d.cause);
    }

    #[test]
    fn eperm_causes_in_order_of_certainty() {
        let f2 = HostFacts {
            io_uring_disabled: Some(2),
            seccomp_mode: "filter".into(),
            ..HostFacts::healthy()
        };
        let d = classify_uring(libc::EPERM, Step::Setup, 512, &f2);
        assert!(d.cause.contains("io_uring_disabled=2"), "{}", d.cause);

        let f1 = HostFacts {
            io_uring_disabled: Some(1),
            cap_sys_admin: false,
            ..HostFacts::healthy()
        };
        let d = classify_uring(libc::EPERM, Step::Setup, 512, &f1);
        assert!(d.cause.contains("io_uring_disabled=1"), "{}", d.cause);
        assert!(d.cause.contains("CAP_SYS_ADMIN"), "{}", d.cause);
        assert!(d.fix.contains("io_uring_group"), "{}", d.fix);

        // =1 with CAP_SYS_ADMIN is allowed, so EPERM must come from elsewhere.
        let f1_admin = HostFacts {
            io_uring_disabled: Some(1),
            seccomp_mode: "filter".into(),
            ..HostFacts::healthy()
        };
        let d = classify_uring(libc::EPERM, Step::Setup, 512, &f1_admin);
        assert!(d.cause.contains("Docker >= 25"), "{}", d.cause);

        let d = classify_uring(libc::EPERM, Step::Setup, 512, &HostFacts::healthy());
        assert!(d.cause.contains("security policy"), "{}", d.cause);
        assert!(!d.shrinkable);
    }

    #[test]
    fn einval_and_enomem_allow_shrinking() {
        let d = classify_uring(libc::EINVAL, Step::Setup, 65_536, &HostFacts::healthy());
        assert!(d.shrinkable);
        assert!(d.cause.contains("1..=32768"), "{}", d.cause);
        assert!(classify_uring(libc::EINVAL, Step::Setup, 512, &HostFacts::healthy()).shrinkable);
        let f = HostFacts {
            cap_ipc_lock: false,
            memlock_bytes: Some(65_536),
            ..HostFacts::healthy()
        };
        let d = classify_uring(libc::ENOMEM, Step::RegisterBuffers, 512, &f);
        assert!(d.shrinkable);
        assert!(d.cause.contains("65536 bytes"), "{}", d.cause);
        assert!(d.cause.contains("CAP_IPC_LOCK"), "{}", d.cause);
        assert!(d.fix.contains("LimitMEMLOCK"), "{}", d.fix);
        // Errors that a smaller ring cannot fix.
        assert!(!classify_uring(libc::ENOMEM, Step::Read, 512, &f).shrinkable);
        assert!(!classify_uring(libc::EMFILE, Step::Setup, 512, &f).shrinkable);
    }

    #[test]
    fn aio_eagain_names_the_sysctls_and_tune() {
        let f = HostFacts {
            aio_max_nr: 256,
            aio_nr: 10,
            ..HostFacts::healthy()
        };
        let d = classify_aio(libc::EAGAIN, 512, &f);
        assert_eq!(d.reason, "EAGAIN");
        assert!(
            d.cause.contains("fs.aio-nr 10 + 512 > fs.aio-max-nr 256"),
            "{}",
            d.cause
        );
        assert!(d.fix.contains("ringmaster-agent tune"), "{}", d.fix);
        let d = classify_aio(libc::ENOSYS, 512, &HostFacts::healthy());
        assert!(d.cause.contains("CONFIG_AIO"), "{}", d.cause);
    }
}
