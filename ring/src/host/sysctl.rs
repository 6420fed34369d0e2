//! Reading and writing sysctls through /proc/sys, with errors that say what to do.
//!
//! Names are the dotted sysctl names (`fs.aio-max-nr`); the file is
//! `/proc/sys/fs/aio-max-nr`. Every error names the sysctl and, where there is one, the fix.

use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Where the kernel exposes sysctls.
pub const PROC_SYS: &str = "/proc/sys";

/// Why a sysctl could not be read or written.
#[derive(thiserror::Error, Debug)]
pub enum SysctlError {
    #[error("{name} does not exist on this kernel ({path} is missing)")]
    Missing { name: String, path: PathBuf },
    #[error(
        "cannot write {name}: /proc/sys is mounted read-only here (EROFS); fix: run the tuner \
         on the host as root or in a privileged container (securityContext.privileged: true), \
         or set it on the host: sysctl -w {name}=<value>"
    )]
    ReadOnly { name: String },
    #[error(
        "cannot {op} {name}: permission denied ({errno}); fix: run as root \
         (sudo ringmaster-agent tune) or in a privileged container"
    )]
    PermissionDenied {
        name: String,
        op: &'static str,
        errno: &'static str,
    },
    #[error(
        "the kernel refused {name}={value} (EINVAL): the value is outside the range this \
         kernel accepts for {name}; fix: use a smaller value"
    )]
    OutOfRange { name: String, value: String },
    #[error("{name}: cannot parse {text:?} from {path} as an integer")]
    Parse {
        name: String,
        path: PathBuf,
        text: String,
    },
    #[error("cannot {op} {name} ({path}): {source}")]
    Io {
        name: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SysctlError {
    /// True when the sysctl file does not exist (older kernel, feature compiled out).
    pub fn is_missing(&self) -> bool {
        matches!(self, SysctlError::Missing { .. })
    }
}

/// `/proc/sys/...` path of a dotted sysctl name.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(PROC_SYS).join(name.replace('.', "/"))
}

fn classify(name: &str, op: &'static str, e: io::Error) -> SysctlError {
    let path = path_of(name);
    match e.raw_os_error() {
        Some(libc::ENOENT) => SysctlError::Missing {
            name: name.into(),
            path,
        },
        Some(libc::EROFS) => SysctlError::ReadOnly { name: name.into() },
        Some(libc::EACCES) => SysctlError::PermissionDenied {
            name: name.into(),
            op,
            errno: "EACCES",
        },
        Some(libc::EPERM) => SysctlError::PermissionDenied {
            name: name.into(),
            op,
            errno: "EPERM",
        },
        _ => SysctlError::Io {
            name: name.into(),
            op,
            path,
            source: e,
        },
    }
}

/// The sysctl's value as the kernel prints it, trimmed.
pub fn read_string(name: &str) -> Result<String, SysctlError> {
    let mut s = String::new();
    std::fs::File::open(path_of(name))
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| classify(name, "read", e))?;
    Ok(s.trim().to_string())
}

fn parse<T: std::str::FromStr>(name: &str, text: String) -> Result<T, SysctlError> {
    text.parse().map_err(|_| SysctlError::Parse {
        name: name.into(),
        path: path_of(name),
        text,
    })
}

/// An unsigned sysctl such as `fs.aio-max-nr`.
pub fn read_u64(name: &str) -> Result<u64, SysctlError> {
    parse(name, read_string(name)?)
}

/// A signed sysctl such as `kernel.io_uring_group` (-1 = none).
pub fn read_i64(name: &str) -> Result<i64, SysctlError> {
    parse(name, read_string(name)?)
}

/// Like [`read_i64`], `Ok(None)` when the kernel does not have this sysctl.
pub fn read_opt_i64(name: &str) -> Result<Option<i64>, SysctlError> {
    match read_i64(name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether this process could write the sysctl, without writing it
/// (`access(W_OK)` sees read-only mounts and missing permission).
pub fn check_writable(name: &str) -> Result<(), SysctlError> {
    rustix::fs::access(path_of(name), rustix::fs::Access::WRITE_OK)
        .map_err(|e| classify(name, "write", io::Error::from(e)))
}

/// Write a value (decimal text); does not read back, see [`write_u64_verified`].
pub fn write_str(name: &str, value: &str) -> Result<(), SysctlError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path_of(name))
        .map_err(|e| classify(name, "write", e))?;
    f.write_all(format!("{value}\n").as_bytes())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => SysctlError::OutOfRange {
                name: name.into(),
                value: value.into(),
            },
            _ => classify(name, "write", e),
        })
}

/// Write an unsigned value.
pub fn write_u64(name: &str, value: u64) -> Result<(), SysctlError> {
    write_str(name, &value.to_string())
}

/// Write an unsigned value and read it back; returns what the kernel now holds, which
/// differs from `value` only if the kernel clamped it or somebody raced us.
pub fn write_u64_verified(name: &str, value: u64) -> Result<u64, SysctlError> {
    write_u64(name, value)?;
    read_u64(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_name_maps_to_proc_sys_path() {
        assert_eq!(
            path_of("fs.aio-max-nr"),
            PathBuf::from("/proc/sys/fs/aio-max-nr")
        );
        assert_eq!(
            path_of("kernel.io_uring_disabled"),
            PathBuf::from("/proc/sys/kernel/io_uring_disabled")
        );
    }

    #[test]
    fn reads_real_sysctls() {
        // Both exist on every Linux with CONFIG_AIO, which the agent requires.
        assert!(read_u64("fs.aio-max-nr").expect("fs.aio-max-nr readable") > 0);
        read_u64("fs.aio-nr").expect("fs.aio-nr readable");
    }

    #[test]
    fn missing_sysctl_is_none_not_error() {
        assert_eq!(
            read_opt_i64("kernel.ringmaster_no_such_sysctl").unwrap(),
            None
        );
        let e = read_u64("kernel.ringmaster_no_such_sysctl").unwrap_err();
        assert!(e.is_missing(), "{e}");
    }

    #[test]
    fn errno_maps_to_typed_error_with_fix() {
        let ro = classify(
            "fs.aio-max-nr",
            "write",
            io::Error::from_raw_os_error(libc::EROFS),
        );
        assert!(matches!(ro, SysctlError::ReadOnly { .. }));
        let text = ro.to_string();
        assert!(
            text.contains("read-only") && text.contains("privileged"),
            "{text}"
        );
        let perm = classify(
            "fs.aio-max-nr",
            "write",
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(perm.to_string().contains("run as root"), "{perm}");
        let other = classify(
            "fs.aio-max-nr",
            "read",
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(matches!(other, SysctlError::Io { .. }));
    }

    #[test]
    fn parse_error_names_the_sysctl() {
        let e = parse::<u64>("fs.aio-max-nr", "lots".into()).unwrap_err();
        assert!(e.to_string().contains("fs.aio-max-nr"), "{e}");
    }
}
