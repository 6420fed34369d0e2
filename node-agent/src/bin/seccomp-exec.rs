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
    let err = std::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .exec();
    eprintln!("seccomp-exec: cannot run {}: {err}", args.command[0]);
    std::process::exit(127);
}
