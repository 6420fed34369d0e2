//! `fs.aio-max-nr` for the cluster, through the host tuner ([`crate::tune::AioMaxNrTuner`]):
//! raise (Enforce; never lowers, original recorded before the first write) or only check
//! (Verify); re-applied on drift by the agent's periodic pass; restored on the cluster's
//! removal. The state file lives in the host state dir, so it survives agent restarts.

use std::path::PathBuf;

use ringmaster_api::SysctlMode;

use super::desired::SysctlTuning;
use crate::tune::{AioMaxNrTuner, RestoreOutcome, TuneError};

/// State file of the original value, in the host state dir.
pub const STATE_FILE: &str = "aio-max-nr.json";
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

/// Applies a StorageCluster's `spec.sysctl` to this node on every agent pass (Enforce raises,
/// Verify only checks, `persist` writes sysctl.d) and restores on the cluster's removal, through
/// the host's [`AioMaxNrTuner`].
#[derive(Clone, Debug)]
pub struct ClusterTuning {
    pub host_state_dir: PathBuf,
    /// Directory for the sysctl.d file (`sysctl.persist`).
    pub sysctl_d_dir: PathBuf,
}

impl ClusterTuning {
    fn tuner(&self) -> AioMaxNrTuner {
        AioMaxNrTuner::new(self.host_state_dir.join(STATE_FILE))
    }

    /// One pass: raise (Enforce) or check (Verify). Never panics; failures land in `error`
    /// with what was read before the failure.
    pub fn ensure(&self, a: &SysctlTuning) -> TuneOutcome {
        let tuner = self.tuner();
        let sizing = a.sizing;
        let plan = match tuner.plan(&sizing) {
            Ok(p) => p,
            Err(e) => {
                return TuneOutcome {
                    error: Some(e.to_string()),
                    ..Default::default()
                }
            }
        };
        let mut out = TuneOutcome {
            required: plan.required,
            current: plan.current,
            aio_nr: plan.aio_nr,
            original: plan.recorded_original,
            tuned: plan.satisfied,
            ..Default::default()
        };
        if a.mode == SysctlMode::Verify {
            return out;
        }
        let persist = a.persist.then(|| self.sysctl_d_dir.join(PERSIST_FILE));
        // Persisting rewrites files: only when something is to change or not yet persisted.
        let persist_needed = persist.as_ref().is_some_and(|p| {
            std::fs::read_to_string(p).map_or(true, |t| t != crate::tune::persist_text(plan.target))
        });
        if !plan.would_change && !persist_needed {
            return out;
        }
        match tuner.apply(&sizing, persist.as_deref().filter(|_| persist_needed)) {
            Ok(o) => {
                out.current = o.current;
                out.changed = o.changed;
                out.original = o.original;
                out.tuned = o.current >= o.required;
            }
            Err(e) => out.error = Some(one_line(&e)),
        }
        out
    }

    /// Put back the recorded original if the value is still the one we set. Returns a
    /// sentence saying what happened.
    pub fn restore(&self) -> Result<String, String> {
        match self.tuner().restore() {
            Ok(RestoreOutcome::Restored { from, to }) => {
                Ok(format!("fs.aio-max-nr restored from {from} to {to}"))
            }
            Ok(RestoreOutcome::AlreadyOriginal { value }) => {
                Ok(format!("fs.aio-max-nr already at its original {value}"))
            }
            Ok(RestoreOutcome::LeftAlone {
                current,
                applied,
                original,
            }) => Ok(format!(
                "fs.aio-max-nr left at {current}: changed by someone else after Ringmaster set \
                 {applied} (original {original})"
            )),
            Ok(RestoreOutcome::NothingRecorded) => {
                Ok("fs.aio-max-nr was never raised by Ringmaster here; nothing to restore".into())
            }
            Err(e) => Err(one_line(&e)),
        }
    }
}

fn one_line(e: &TuneError) -> String {
    e.to_string().replace('\n', " ")
}
