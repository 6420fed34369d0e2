//! `fs.aio-max-nr` for the cluster: raise (Enforce) or only check (Verify), re-applied on
//! drift by the agent's periodic pass, restored on the cluster's removal. The arithmetic is
//! in `ringmaster_api::sizing`; the write/readback/state file in the host tuner.

use std::path::{Path, PathBuf};

use ringmaster_api::SysctlMode;

use super::desired::AioSizing;

const AIO_MAX_NR: &str = "/proc/sys/fs/aio-max-nr";
const AIO_NR: &str = "/proc/sys/fs/aio-nr";
/// State file (in the host state dir) with the value found before the first raise.
const ORIGINAL_FILE: &str = "aio-max-nr.original";
/// sysctl.d file written with `sysctl.persist`.
pub const PERSIST_FILE: &str = "60-ringmaster.conf";

/// Result of one tuning pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TuneOutcome {
    pub required: u64,
    pub current: u64,
    pub aio_nr: u64,
    /// Value before Ringmaster first raised it, when it did.
    pub original: Option<u64>,
    /// `current >= required`.
    pub tuned: bool,
    /// This pass wrote the sysctl (first raise or drift repaired).
    pub changed: bool,
    /// Why tuning failed (read-only /proc/sys, no privilege, ...), with the fix.
    pub error: Option<String>,
}

/// The node's tuner: state lives in `host_state_dir` so it survives agent restarts.
#[derive(Clone, Debug)]
pub struct AioTuner {
    pub host_state_dir: PathBuf,
    /// Directory for the sysctl.d file (`sysctl.persist`).
    pub sysctl_d_dir: PathBuf,
}

fn read_u64(path: &str) -> Result<u64, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    s.trim()
        .parse()
        .map_err(|e| format!("{path}: '{}' is not a number: {e}", s.trim()))
}

impl AioTuner {
    fn original_path(&self) -> PathBuf {
        self.host_state_dir.join(ORIGINAL_FILE)
    }

    /// The recorded original value, if Ringmaster raised the sysctl on this node.
    pub fn recorded_original(&self) -> Option<u64> {
        std::fs::read_to_string(self.original_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// One pass: read, compute the required value, raise it (Enforce; never lowers) or
    /// only report (Verify). Never panics; failures land in `error`.
    pub fn ensure(&self, sizing: &AioSizing) -> TuneOutcome {
        let mut out = TuneOutcome {
            original: self.recorded_original(),
            ..Default::default()
        };
        let (current, aio_nr) = match (read_u64(AIO_MAX_NR), read_u64(AIO_NR)) {
            (Ok(c), Ok(n)) => (c, n),
            (Err(e), _) | (_, Err(e)) => {
                out.error = Some(e);
                return out;
            }
        };
        out.aio_nr = aio_nr;
        out.current = current;
        out.required = sizing.required(aio_nr);
        if current >= out.required {
            out.tuned = true;
        } else if sizing.mode == SysctlMode::Enforce {
            if let Err(e) = self.raise(current, out.required) {
                out.error = Some(e);
            } else {
                out.changed = true;
                out.original = self.recorded_original();
                out.current = read_u64(AIO_MAX_NR).unwrap_or(current);
                out.tuned = out.current >= out.required;
                if !out.tuned {
                    out.error = Some(format!(
                        "wrote fs.aio-max-nr={} but read back {}: another process lowers it",
                        out.required, out.current
                    ));
                }
            }
        }
        if sizing.persist && sizing.mode == SysctlMode::Enforce && out.tuned {
            if let Err(e) = self.persist(out.current) {
                out.error.get_or_insert(e);
            }
        }
        out
    }

    fn raise(&self, current: u64, target: u64) -> Result<(), String> {
        // Record the original before the first write, so a crash right after still knows it.
        if self.recorded_original().is_none() {
            std::fs::create_dir_all(&self.host_state_dir).map_err(|e| {
                format!(
                    "cannot create host state dir {}: {e} (mount it writable)",
                    self.host_state_dir.display()
                )
            })?;
            write_atomic(&self.original_path(), &format!("{current}\n")).map_err(|e| {
                format!(
                    "cannot record original fs.aio-max-nr in {}: {e}",
                    self.host_state_dir.display()
                )
            })?;
        }
        std::fs::write(AIO_MAX_NR, format!("{target}\n")).map_err(|e| match e.raw_os_error() {
            Some(libc::EROFS) => format!(
                "cannot write {AIO_MAX_NR}: read-only /proc/sys; run the agent container privileged \
                 (securityContext.privileged: true) or set sysctl.mode: Verify"
            ),
            Some(libc::EACCES) | Some(libc::EPERM) => format!(
                "cannot write {AIO_MAX_NR}: permission denied; the agent needs root with \
                 CAP_SYS_ADMIN in the host's user namespace, or set sysctl.mode: Verify"
            ),
            Some(libc::EINVAL) => format!(
                "cannot write {AIO_MAX_NR}={target}: the kernel refused the value (EINVAL); \
                 lower aio.maxEvents/workers/processesPerNode or sysctl.aioMaxNr"
            ),
            _ => format!("cannot write {AIO_MAX_NR}={target}: {e}"),
        })
    }

    fn persist(&self, value: u64) -> Result<(), String> {
        let body = format!(
            "# Written by ringmaster-agent (StorageCluster sysctl.persist).\nfs.aio-max-nr = {value}\n"
        );
        let path = self.sysctl_d_dir.join(PERSIST_FILE);
        if std::fs::read_to_string(&path).is_ok_and(|b| b == body) {
            return Ok(());
        }
        write_atomic(&path, &body).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Put back the recorded original and forget it. Returns the value restored, `None`
    /// when Ringmaster never raised it on this node (nothing to restore).
    pub fn restore(&self) -> Result<Option<u64>, String> {
        let _ = std::fs::remove_file(self.sysctl_d_dir.join(PERSIST_FILE));
        let Some(original) = self.recorded_original() else {
            return Ok(None);
        };
        let current = read_u64(AIO_MAX_NR)?;
        if current > original {
            std::fs::write(AIO_MAX_NR, format!("{original}\n"))
                .map_err(|e| format!("cannot restore {AIO_MAX_NR}={original}: {e}"))?;
        }
        let back = read_u64(AIO_MAX_NR)?;
        if back != original && current > original {
            return Err(format!(
                "restored {AIO_MAX_NR}={original} but read back {back}"
            ));
        }
        std::fs::remove_file(self.original_path())
            .map_err(|e| format!("cannot remove {}: {e}", self.original_path().display()))?;
        Ok(Some(original))
    }
}

fn write_atomic(path: &Path, body: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
