//! `seccomp-exec`: run a command under a seccomp filter that fails the io_uring (and
//! optionally libaio) syscalls with a chosen errno. It reproduces, for real, what a
//! container runtime's profile does to a storage service:
//!
//! ```text
//! seccomp-exec --io-uring ENOSYS -- ringmaster-agent check     # Podman/CRI-O, gVisor
//! seccomp-exec --io-uring EPERM  -- ringmaster-agent check     # Docker >= 25, containerd >= 2.0
//! ```
//!
//! Everything else is allowed. The filter sets no_new_privs and is inherited by children.
//!
//! It can also take privileges away before the exec, so tests reproduce an ordinary
//! (non-root-equivalent) workload for real:
//!
//! ```text
//! seccomp-exec --drop-cap SYS_ADMIN -- ringmaster-agent check   # kernel.io_uring_disabled=1
//! seccomp-exec --memlock 65536 --drop-cap IPC_LOCK -- ...       # registered buffers → ENOMEM
//! seccomp-exec --drop-caps -- ...                               # both of the above caps
//! ```
//!
//! A dropped capability leaves the effective, permitted, inheritable, ambient and bounding
//! sets, so a root child cannot get it back at exec.
//!
//! And it can cut a program between two steps, to show what it did first:
//!
//! ```text
//! seccomp-exec --kill-at-write-open -- ringmaster-agent tune   # dies as it opens the sysctl
//! ```

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

use clap::Parser;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Parser)]
#[command(
    name = "seccomp-exec",
    about = "Run a command with io_uring/libaio syscalls failing with an errno"
)]
struct Args {
    /// errno for io_uring_setup/enter/register: a name (ENOSYS, EPERM, ...) or a number.
    #[arg(long)]
    io_uring: Option<String>,
    /// errno for io_setup/io_submit/io_getevents/io_destroy (libaio).
    #[arg(long)]
    libaio: Option<String>,
    /// Set RLIMIT_MEMLOCK (soft and hard) to this many bytes before the exec.
    #[arg(long, value_name = "BYTES")]
    memlock: Option<u64>,
    /// Drop CAP_SYS_ADMIN and CAP_IPC_LOCK from all capability sets before the exec.
    #[arg(long)]
    drop_caps: bool,
    /// Drop one capability (SYS_ADMIN, IPC_LOCK, CAP_SYS_RESOURCE, ... or its number); repeatable.
    #[arg(long, value_name = "NAME")]
    drop_cap: Vec<String>,
    /// Kill the process (SIGSYS) as it opens an existing file for writing (O_WRONLY without
    /// O_CREAT: a /proc/sys write), after everything it did before.
    #[arg(long)]
    kill_at_write_open: bool,
    /// Command and arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

fn errno_of(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    Ok(match s.to_ascii_uppercase().as_str() {
        "ENOSYS" => libc::ENOSYS,
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "EINVAL" => libc::EINVAL,
        "ENOMEM" => libc::ENOMEM,
        "EAGAIN" => libc::EAGAIN,
        "EFAULT" => libc::EFAULT,
        other => {
            return Err(format!(
                "unknown errno '{other}': use a name like ENOSYS or a number"
            ))
        }
    } as u32)
}

/// Capability number of `SYS_ADMIN`, `CAP_SYS_ADMIN`, `sys_admin` or `21`.
fn cap_of(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return if n <= 63 {
            Ok(n)
        } else {
            Err(format!("capability number {n} out of range 0..=63"))
        };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("CAP_").unwrap_or(&up);
    Ok(match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "DAC_READ_SEARCH" => 2,
        "FOWNER" => 3,
        "SETGID" => 6,
        "SETUID" => 7,
        "SETPCAP" => 8,
        "NET_ADMIN" => 12,
        "IPC_LOCK" => 14,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        other => {
            return Err(format!(
                "unknown capability '{other}': use a name like SYS_ADMIN or IPC_LOCK, or a number"
            ))
        }
    })
}

/// Remove `caps` from the bounding, ambient, inheritable, permitted and effective sets.
fn drop_caps(caps: &[u32]) -> Result<(), String> {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
    for &c in caps {
        // Bounding first: it needs CAP_SETPCAP, which we still hold.
        // SAFETY: plain prctl calls with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            return Err(format!(
                "dropping capability {c} from the bounding set: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above; EINVAL (no ambient support) is harmless.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
                c as libc::c_ulong,
                0,
                0,
            )
        };
    }
    let mask = caps.iter().fold(CapabilitySet::empty(), |m, &c| {
        m | CapabilitySet::from_bits_retain(1u64 << c)
    });
    let mut sets = capabilities(None).map_err(|e| format!("capget: {e}"))?;
    sets.effective.remove(mask);
    sets.permitted.remove(mask);
    sets.inheritable.remove(mask);
    set_capabilities(None, sets).map_err(|e| format!("capset: {e}"))
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
}

fn main() {
    let args = Args::parse();
    let fail = |msg: String| -> ! {
        eprintln!("seccomp-exec: {msg}");
        std::process::exit(2)
    };
    if let Some(bytes) = args.memlock {
        let lim = rustix::process::Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Memlock, lim) {
            fail(format!("setting RLIMIT_MEMLOCK to {bytes}: {e}"));
        }
    }
    let mut caps: Vec<u32> = Vec::new();
    if args.drop_caps {
        caps.extend([21, 14]); // CAP_SYS_ADMIN, CAP_IPC_LOCK
    }
    for name in &args.drop_cap {
        caps.push(cap_of(name).unwrap_or_else(|e| fail(e)));
    }
    if !caps.is_empty() {
        drop_caps(&caps).unwrap_or_else(|e| fail(e));
    }
    let mut groups: Vec<(Vec<i64>, u32)> = Vec::new();
    let parse = |s: &str| {
        errno_of(s).unwrap_or_else(|e| {
            eprintln!("seccomp-exec: {e}");
            std::process::exit(2)
        })
    };
    if let Some(e) = &args.io_uring {
        groups.push((
            vec![
                libc::SYS_io_uring_setup,
                libc::SYS_io_uring_enter,
                libc::SYS_io_uring_register,
            ],
            parse(e),
        ));
    }
    if let Some(e) = &args.libaio {
        groups.push((
            vec![
                libc::SYS_io_setup,
                libc::SYS_io_submit,
                libc::SYS_io_getevents,
                libc::SYS_io_destroy,
            ],
            parse(e),
        ));
    }
    // seccompiler applies one match action per filter; stack one filter per errno group.
    for (syscalls, errno) in groups {
        let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
            syscalls.into_iter().map(|s| (s, vec![])).collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            arch(),
        )
        .expect("valid seccomp filter");
        let prog: BpfProgram = filter.try_into().expect("filter compiles to BPF");
        if let Err(e) = seccompiler::apply_filter(&prog) {
            eprintln!("seccomp-exec: installing the filter failed: {e}");
            std::process::exit(2);
        }
    }
    if args.kill_at_write_open {
        install_kill_at_write_open().unwrap_or_else(|e| fail(e));
    }
    let err = std::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .exec();
    eprintln!("seccomp-exec: cannot run {}: {err}", args.command[0]);
    std::process::exit(127);
}

/// A filter that kills the process at open/openat with O_WRONLY and without O_CREAT.
fn install_kill_at_write_open() -> Result<(), String> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let mask = (libc::O_ACCMODE | libc::O_CREAT) as u64;
    let write_existing = |flags_arg: u8| {
        SeccompCondition::new(
            flags_arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            libc::O_WRONLY as u64,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| format!("building the open filter: {e}"))
    };
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_openat, vec![write_existing(2)?]);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_open, vec![write_existing(1)?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        arch(),
    )
    .map_err(|e| format!("building the open filter: {e}"))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("compiling the open filter: {e}"))?;
    seccompiler::apply_filter(&prog).map_err(|e| format!("installing the open filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_and_numbers() {
        assert_eq!(cap_of("SYS_ADMIN"), Ok(21));
        assert_eq!(cap_of("cap_ipc_lock"), Ok(14));
        assert_eq!(cap_of("24"), Ok(24));
        assert!(cap_of("64").is_err());
        assert!(cap_of("FLY").unwrap_err().contains("SYS_ADMIN"));
    }

    #[test]
    fn errno_names_and_numbers() {
        assert_eq!(errno_of("ENOSYS"), Ok(libc::ENOSYS as u32));
        assert_eq!(errno_of("eperm"), Ok(libc::EPERM as u32));
        assert_eq!(errno_of("5"), Ok(5));
        assert!(errno_of("EWHAT").is_err());
    }
}
